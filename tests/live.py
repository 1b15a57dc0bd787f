"""Real server processes for the tests: `mlps serve` (uvicorn + a worker process) or `mlps api` plus separate
workers, started by Stack or running(); and one `mlps serve` shared by the client and CLI tests, with a trained
iris job.

The e2e tests have their own `server` fixture in tests/e2e/conftest.py. The `live_url` and `iris_job` fixtures here
are imported by the client and CLI tests, and the process-wide cache below makes all of them use one server.
"""

import os
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import Client
from tests.helpers import dataset_path, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_key(data_dir: Path) -> str:
    """The admin key `mlps serve` / `mlps api` wrote on first start."""
    return (data_dir / "admin.key").read_text().strip()


def admin_headers(data_dir: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key(data_dir)}"}


class Stack:
    """Processes of one deployment sharing a data dir and a database; start, stop and kill them by name."""

    def __init__(self, data_dir: Path, database_url: str | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / f"mlps-{os.getpid()}-{id(self)}.log"
        # XDG_STATE_HOME: where `mlps serve` records its URL and data dir, here beside the test's data dir instead
        # of the user's home
        self.env = {**os.environ, "MLPS_DATA_DIR": str(data_dir), "MLPS_POLL_INTERVAL_S": "0.05",
                    "MLPS_HEARTBEAT_S": "0.5", "XDG_STATE_HOME": str(data_dir.parent / "state"), **(env or {})}
        self.env.pop("MLPS_DATABASE_URL", None)
        if database_url:
            self.env["MLPS_DATABASE_URL"] = database_url
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=self.env,
                                stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def run(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "service.cli", *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self, name: str, timeout: float = 30) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{self.log.read_text()[-3000:]}")

    def wait_ready(self, url: str) -> None:
        """Until /readyz says ready, or (an API started without a worker) that a live worker is all it lacks."""
        def ready() -> bool:
            self.check_alive()
            try:
                resp = httpx.get(f"{url}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return resp.status_code == 200 or (resp.status_code == 503
                                               and resp.json()["detail"].startswith("no live worker")
                                               and ";" not in resp.json()["detail"])

        wait_for(ready, timeout=120, interval=0.1, what=f"{url}/readyz")


@contextmanager
def running(*commands: list[str], data_dir: Path, port: int, database_url: str | None = None,
            env: dict[str, str] | None = None):
    """Start the commands (the first serves HTTP on `port`), wait for /readyz, yield an HTTP client that sends
    the admin key."""
    stack = Stack(data_dir, database_url, env)
    try:
        for i, cmd in enumerate(commands):
            stack.start(f"p{i}", *cmd)
        url = f"http://127.0.0.1:{port}"
        stack.wait_ready(url)
        with httpx.Client(base_url=url, timeout=30, headers=admin_headers(data_dir)) as client:
            client.data_dir = data_dir  # where the server keeps admin.key, for commands run beside it
            yield client
    finally:
        stack.stop_all()


IRIS_RECORDS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
]
SHORT_TRAINING = {"epochs": 10, "learning_rate": 0.01, "batch_size": 16}
_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def live_url(tmp_path_factory) -> str:
    """The base URL of a real `mlps serve` on a free port, started once per test session."""
    if "url" not in _shared:
        stack = ExitStack()
        data_dir = tmp_path_factory.mktemp("live") / "var"
        port = free_port()
        stack.enter_context(running(["serve", "--port", str(port), "--data-dir", str(data_dir)],
                                    data_dir=data_dir, port=port))
        _shared.update(url=f"http://127.0.0.1:{port}", stack=stack, data_dir=data_dir)
    yield _shared["url"]
    stack = _shared.pop("stack", None)
    if stack is not None:
        stack.close()


def live_data_dir() -> str:
    """The live server's data dir, where it wrote admin.key."""
    return str(_shared["data_dir"])


def live_key() -> str:
    """The live server's admin key."""
    return admin_key(_shared["data_dir"])


def trained_iris_job(url: str, api_key: str) -> dict[str, Any]:
    """A finished iris classification job (10 epochs) on the server at `url`, trained once per server."""
    key = ("iris_job", url.rstrip("/"))
    if key not in _shared:
        with Client(url, api_key=api_key) as mlps:
            dataset = mlps.upload_dataset(dataset_path("iris.csv"))
            job = mlps.submit_job({"dataset_id": dataset["id"], "target": "species", "training": SHORT_TRAINING})
            job = mlps.wait(job["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        _shared[key] = job
    return _shared[key]


@pytest.fixture(scope="session")
def iris_job(live_url: str) -> dict[str, Any]:
    """A finished iris classification job on the live server."""
    return trained_iris_job(live_url, live_key())
