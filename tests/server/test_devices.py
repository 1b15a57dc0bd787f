"""Device allocation is pure, so simulated GPU lists cover the scheduling logic without a GPU."""

from service.server.devices import Device, accepted_requests, choose, free_devices, waiting_reason

CPU = Device("cpu", "cpu", "CPU")
GPU0 = Device("cuda:0", "cuda", "NVIDIA H100 80GB HBM3", 80 << 30)
GPU1 = Device("cuda:1", "cuda", "NVIDIA H100 80GB HBM3", 80 << 30)
MPS = Device("mps", "mps", "Apple MPS")


def test_auto_prefers_a_free_gpu_then_mps_then_cpu():
    assert choose("auto", [CPU, GPU0, GPU1], busy=set()) == GPU0
    assert choose("auto", [CPU, GPU0, GPU1], busy={"cuda:0"}) == GPU1
    assert choose("auto", [CPU, GPU0, GPU1], busy={"cuda:0", "cuda:1"}) == CPU
    assert choose("auto", [CPU, MPS], busy=set()) == MPS
    assert choose("auto", [CPU], busy={"cpu"}) is None


def test_explicit_requests():
    assert choose("cpu", [CPU, GPU0], busy=set()) == CPU
    assert choose("cuda", [CPU, GPU0, GPU1], busy={"cuda:0"}) == GPU1
    assert choose("cuda:1", [CPU, GPU0, GPU1], busy=set()) == GPU1
    assert choose("cuda:1", [CPU, GPU0], busy=set()) is None
    assert choose("cuda", [CPU], busy=set()) is None


def test_a_cpu_only_worker_never_accepts_gpu_jobs():
    assert accepted_requests([CPU]) == ["auto", "cpu"]
    assert accepted_requests([CPU, GPU0, GPU1]) == ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]
    assert accepted_requests([GPU1]) == ["auto", "cuda", "cuda:1"]


def test_slots_per_device_bound_the_jobs_on_each_gpu():
    devices = [CPU, GPU0, GPU1]
    assert free_devices(devices, [], 2) == devices
    assert free_devices(devices, ["cuda:0", "cuda:0"], 2) == [CPU, GPU1]
    assert free_devices(devices, ["cuda:0", "cuda:1", "cpu"], 1) == []
    # what a worker will claim next follows from its free devices
    assert accepted_requests(free_devices(devices, ["cuda:0", "cuda:1"], 1)) == ["auto", "cpu"]


def test_waiting_reasons_name_the_missing_device():
    assert waiting_reason("auto") is None
    assert waiting_reason("cuda") == "waiting for a worker with a free CUDA GPU"
    assert waiting_reason("cuda:3") == "waiting for a worker with a free cuda:3"
