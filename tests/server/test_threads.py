"""The thread rule of a training job: the CPUs this process may use, shared among the worker's jobs, fewer under
other work; MLPS_TORCH_THREADS wins."""

import os
import subprocess
import sys
import time

import pytest

from service.server.devices import CpuLoad, _cpu_jiffies, cgroup_cpu_limit, cpu_budget, usable_cpus
from service.server.runner import SMALL_STEP_WORK, thread_count

BIG = SMALL_STEP_WORK * 4


def test_configured_threads_always_win():
    assert thread_count(configured=3, work=10, cpus=2, jobs=4, busy_elsewhere=2.0) == 3
    assert thread_count(configured=1, work=BIG, cpus=16, jobs=1, busy_elsewhere=0.0) == 1


def test_small_steps_train_on_one_thread():
    assert thread_count(configured=0, work=SMALL_STEP_WORK - 1, cpus=16, jobs=1, busy_elsewhere=0.0) == 1


def test_the_cpus_are_shared_among_the_workers_jobs():
    assert thread_count(configured=0, work=BIG, cpus=16, jobs=1, busy_elsewhere=0.0) == 16
    assert thread_count(configured=0, work=BIG, cpus=16, jobs=3, busy_elsewhere=None) == 5
    assert thread_count(configured=0, work=BIG, cpus=2, jobs=4, busy_elsewhere=None) == 1


def test_other_work_on_the_machine_takes_threads_away():
    assert thread_count(configured=0, work=BIG, cpus=2, jobs=1, busy_elsewhere=1.0) == 1
    assert thread_count(configured=0, work=BIG, cpus=8, jobs=1, busy_elsewhere=2.6) == 5
    assert thread_count(configured=0, work=BIG, cpus=8, jobs=2, busy_elsewhere=1.0) == 4  # the share is smaller
    assert thread_count(configured=0, work=BIG, cpus=2, jobs=1, busy_elsewhere=5.0) == 1  # never none


@pytest.mark.parametrize(("files", "limit"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_the_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_the_budget_is_the_affinity_mask_capped_by_the_quota(tmp_path):
    mask = len(usable_cpus() or range(os.cpu_count() or 1))
    assert cpu_budget(tmp_path) == mask  # no quota here
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu_budget(tmp_path) == 1  # half a CPU still trains on one thread
    (tmp_path / "cpu.max").write_text(f"{(mask + 3) * 100000} 100000\n")
    assert cpu_budget(tmp_path) == mask


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_process_burning_a_core_counts_as_busy_elsewhere():
    load = CpuLoad()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load.busy_elsewhere(0.2)  # from now on
        assert load.busy_elsewhere(0.5) >= 0.6
    finally:
        burner.kill()
        burner.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_this_processs_own_work_is_not_busy_elsewhere():
    load = CpuLoad()
    load.busy_elsewhere(0.0)
    before, own_before = _cpu_jiffies(load.cpus), os.times()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # a core's worth of work in this process, as far as the machine lets it run
        pass
    elsewhere = load.busy_elsewhere(0.0)
    after, own_after = _cpu_jiffies(load.cpus), os.times()
    assert before is not None and after is not None and elsewhere is not None
    n = len(load.cpus or [])
    total = after[1] - before[1]
    own = (own_after.user + own_after.system - own_before.user - own_before.system) * os.sysconf("SC_CLK_TCK")
    assert own / total * n > 0.1  # it did run
    assert elsewhere == pytest.approx((after[0] - before[0] - own) / total * n, abs=0.1)
