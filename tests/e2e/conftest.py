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
        self.env = {**os.environ, "MLPS_DATA_DIR": str(data_dir), "MLPS_POLL_INTERVAL_S": "0.05",
                    "MLPS_HEARTBEAT_S": "0.5", **(env or {})}
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
        def ready() -> bool:
            self.check_alive()
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`mlps serve`: the README's single-machine setup."""
    data_dir = tmp_path_factory.mktemp("serve") / "var"
    port = free_port()
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port) as c:
        yield c
