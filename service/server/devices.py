"""Device discovery (CUDA, MPS, CPU), the pure choice of a device for a job, and the CPUs a job's threads may use."""

import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Device:
    name: str  # "cpu", "cuda:0", "mps"
    kind: str  # "cpu", "cuda", "mps"
    label: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def description(self) -> str:
        return self.name if self.kind == "cpu" else f"{self.name} {self.label}"


def discover(spec: str = "auto") -> list[Device]:
    """The devices this process may use: `auto`, `cpu`, or a comma list such as `cuda:0,cuda:1`."""
    import torch

    found: list[Device] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(Device(f"cuda:{i}", "cuda", props.name, int(props.total_memory)))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append(Device("mps", "mps", "Apple MPS"))
    cpu = Device("cpu", "cpu", "CPU")
    if spec == "auto":
        return [*found, cpu]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    by_name = {d.name: d for d in [*found, cpu]}
    missing = [w for w in wanted if w not in by_name and w != "cuda"]
    if missing:
        raise ValueError(f"device(s) {', '.join(missing)} not found; this machine has {', '.join(by_name)}")
    out: list[Device] = []
    for w in wanted:
        out.extend([d for d in found if d.kind == "cuda"] if w == "cuda" else [by_name[w]])
    return out


def free_devices(devices: list[Device], running_on: list[str], slots_per_device: int) -> list[Device]:
    """Devices with a free slot, given the device names of the jobs running now."""
    busy = Counter(running_on)
    return [d for d in devices if busy[d.name] < slots_per_device]


def accepted_requests(devices: list[Device]) -> list[str]:
    """The spec `device` values a worker with these devices can serve."""
    accepted = {"auto"}
    for d in devices:
        accepted.add(d.name)
        if d.kind == "cuda":
            accepted.add("cuda")
    return sorted(accepted)


def choose(request: str, devices: list[Device], busy: set[str]) -> Device | None:
    """The device for a job asking for `request`, among free ones; auto prefers a GPU, then MPS, then CPU."""
    free = [d for d in devices if d.name not in busy]
    if request == "auto":
        for kind in ("cuda", "mps", "cpu"):
            for d in free:
                if d.kind == kind:
                    return d
        return None
    if request == "cuda":
        return next((d for d in free if d.kind == "cuda"), None)
    return next((d for d in free if d.name == request), None)


def waiting_reason(request: str) -> str | None:
    """What a queued job asking for `request` waits for, in words."""
    if request in ("auto", "cpu"):
        return None
    if request == "cuda":
        return "waiting for a worker with a free CUDA GPU"
    return f"waiting for a worker with a free {request}"


# ---------------------------------------------------------------- CPUs for a job's threads


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us`), or None when there is none (or it cannot be read)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> set[int] | None:
    """The CPUs this process may run on (its affinity mask), or None where the platform does not say."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return set(getaffinity(0)) if getaffinity is not None else None


def cpu_budget(root: Path = CGROUP_ROOT) -> int:
    """How many CPUs this process may keep busy: its affinity mask, capped by its cgroup's quota (at least 1)."""
    cpus = usable_cpus()
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, math.floor(limit)) if limit >= 1 else 1
    return max(1, n)


def _cpu_jiffies(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot over `cpus` (every CPU when None), from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        ticks = [int(v) for v in rest.split()]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        spent = sum(ticks[:8])  # guest time is already counted in user time
        busy += spent - idle
        total += spent
    return (busy, total) if total else None


def _own_jiffies() -> int:
    """Clock ticks of CPU time this process has used (user + system, all its threads)."""
    t = os.times()
    return round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


class CpuLoad:
    """How many of this process's usable CPUs other work kept busy since the last reading: every process but this
    one (other jobs, other services, a neighbour's build), from /proc/stat and this process's own CPU time. Linux
    only; elsewhere `busy_elsewhere` is None."""

    def __init__(self) -> None:
        self.cpus = usable_cpus()
        self.last = self._read()
        self._at = time.monotonic()

    def _read(self) -> tuple[int, int, int] | None:
        jiffies = _cpu_jiffies(self.cpus)
        return None if jiffies is None else (*jiffies, _own_jiffies())

    def busy_elsewhere(self, min_interval_s: float = 0.2) -> float | None:
        """CPUs busy with other processes' work, averaged since the previous reading (waiting until at least
        `min_interval_s` has passed since it, so that the clock ticks say something)."""
        if self.last is None:
            return None
        if (elapsed := time.monotonic() - self._at) < min_interval_s:
            time.sleep(min_interval_s - elapsed)
        now = self._read()
        before, self.last = self.last, now
        self._at = time.monotonic()
        if now is None:
            return None
        busy, total, own = (a - b for a, b in zip(now, before, strict=True))
        if total <= 0:
            return None
        n = len(self.cpus) if self.cpus is not None else (os.cpu_count() or 1)
        return max(0.0, (busy - own) / total * n)
