"""Real processes: `mlps serve` (uvicorn + a worker process), or `mlps api` plus separate workers."""

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlps(*args: str, data_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MLPS_DATA_DIR": str(data_dir), "MLPS_POLL_INTERVAL_S": "0.05",
           "MLPS_HEARTBEAT_S": "0.5"}
    env.pop("MLPS_DATABASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ready(url: str, procs: list[subprocess.Popen], log: Path) -> bool:
    for p in procs:
        if p.poll() is not None:
            raise AssertionError(f"process exited with {p.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running(*commands: list[str], data_dir: Path, port: int):
    log = data_dir.parent / f"mlps-{port}.log"
    procs = [mlps(*cmd, data_dir=data_dir, log=log) for cmd in commands]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url, procs, log), timeout=120, interval=0.1, what=f"{url}/readyz")
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        for p in procs:
            stop(p)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`mlps serve`: the README's single-machine setup."""
    data_dir = tmp_path_factory.mktemp("serve") / "var"
    port = free_port()
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port) as c:
        yield c
