"""Device discovery (CUDA, MPS, CPU) and the pure choice of a device for a job."""

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


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
