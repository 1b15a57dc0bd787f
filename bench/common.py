"""What every benchmark shares: a real server on a free port, its admin key, the machine, medians."""

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.005) -> Any:
    """Poll until predicate() is truthy and return its value, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, cores, Python, torch and its thread count (and the GPU, if any)."""
    import torch

    text = (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


class Server:
    """A real server process (`mlps serve` by default) on a temp data dir and a free port.

    Once /healthz answers, `<data dir>/admin.key` (written on first start by servers that require API keys)
    is read, if it exists, and sent as a bearer token with every request of `client()`.
    """

    def __init__(self, args: Sequence[str] | None = None, *, env: dict[str, str] | None = None,
                 data_dir: Path | None = None, ready_path: str = "/readyz") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mlps-bench-"))
        self.data_dir = data_dir or self.tmp / "var"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args) if args is not None else [sys.executable, "-m", "service.cli", "serve", "--devices",
                                                         "cpu"]
        # No per-key rate limit: the throughput benchmarks send far more than a person's requests per second.
        self.env = {**os.environ, "MLPS_DATA_DIR": str(self.data_dir), "MLPS_PORT": str(self.port),
                    "MLPS_HOST": "127.0.0.1", "MLPS_RATE_LIMIT_PER_S": "0", **(env or {})}
        self.ready_path = ready_path
        self.headers: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        log = (self.tmp / "server.log").open("wb")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        with httpx.Client(base_url=self.url, timeout=5) as http:
            wait(lambda: self._answers(http, "/healthz"), timeout=timeout, interval=0.05)
            key = self.data_dir / "admin.key"
            if key.exists():
                self.headers = {"Authorization": f"Bearer {key.read_text().strip()}"}
            wait(lambda: self._answers(http, self.ready_path), timeout=timeout, interval=0.05)

    def _answers(self, http: httpx.Client, path: str) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.tmp / 'server.log'}")
        try:
            return http.get(path, headers=self.headers).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, timeout: float = 60.0, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, **kwargs)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def upload(http: httpx.Client, path: Path) -> dict[str, Any]:
    """POST /datasets with a file; the data set."""
    with path.open("rb") as fh:
        r = http.post("/datasets", files={"file": (path.name, fh)})
    r.raise_for_status()
    return r.json()


def run_job(http: httpx.Client, spec: dict[str, Any], timeout: float = 600.0,
            interval: float = 0.005) -> tuple[float, dict[str, Any]]:
    """Submit a job and wait until it succeeded: (submit-to-succeeded seconds, the job)."""
    t0 = time.perf_counter()
    r = http.post("/jobs", json=spec)
    r.raise_for_status()
    job_id = r.json()["id"]

    def finished():
        job = http.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait(finished, timeout=timeout, interval=interval)
    wall = time.perf_counter() - t0
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
    return wall, job


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
