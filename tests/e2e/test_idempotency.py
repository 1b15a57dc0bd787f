"""Idempotency keys against real servers: concurrent duplicates (threads, and two API processes on one database,
SQLite and PostgreSQL) create one resource; the reaper of a running API expires keys; the Python client retries
through a real proxy that loses its first answer, or answers 503, with the same key and gets the first response."""

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service.client import Client
from service.server.db import make_engine, make_sessionmaker
from service.server.tables import IdempotencyKey
from tests.helpers import dataset_path, upload, wait_for
from tests.live import Stack, admin_headers, free_port

BOTH_DATABASES = True
HEADER = "Idempotency-Key"
DUPLICATES = 8
TTL_S = 2  # of the reaper test's keys


def spec(dataset_id: str, epochs: int = 2) -> dict:
    return {"dataset_id": dataset_id, "target": "species", "training": {"epochs": epochs}}


def at_once(calls):
    """Run the calls in threads that start together; answers their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_concurrent_duplicate_submissions_create_one_job(server):
    dataset = upload(server, "iris.csv").json()
    headers = {HEADER: str(uuid.uuid4())}
    answers = at_once([lambda: server.post("/jobs", json=spec(dataset["id"]), headers=headers)] * DUPLICATES)
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == DUPLICATES - 1
    assert server.get("/jobs", params={"dataset_id": dataset["id"]}).json()["total"] == 1


def test_concurrent_duplicate_uploads_store_one_data_set(server):
    name = f"dup-{uuid.uuid4().hex[:8]}"
    data = dataset_path("iris.csv").read_bytes()
    headers = {HEADER: str(uuid.uuid4())}

    def send() -> httpx.Response:
        return server.post("/datasets", files={"file": ("iris.csv", data, "text/csv")}, data={"name": name},
                           headers=headers)

    answers = at_once([send] * DUPLICATES)
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    listed = server.get("/datasets", params={"limit": 500}).json()["items"]
    assert [d["name"] for d in listed].count(name) == 1


@pytest.fixture
def two_apis(tmp_path: Path, database: str):
    """Two `mlps api` processes on one database (the test's SQLite file or PostgreSQL) and one data dir."""
    data_dir = tmp_path / "var"
    stack = Stack(data_dir, database)
    stack.run("migrate", "--data-dir", str(data_dir))
    clients = []
    try:
        for name in ("api1", "api2"):  # one after the other: the first writes the admin key
            port = free_port()
            stack.start(name, "api", "--port", str(port), "--data-dir", str(data_dir))
            stack.wait_ready(f"http://127.0.0.1:{port}")
            clients.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                        headers=admin_headers(data_dir)))
        yield clients
    finally:
        for c in clients:
            c.close()
        stack.stop_all()


def test_duplicates_sent_to_two_api_processes_create_one_job(two_apis):
    first, second = two_apis
    dataset = upload(first, "iris.csv").json()
    headers = {HEADER: str(uuid.uuid4())}
    calls = [lambda c=c: c.post("/jobs", json=spec(dataset["id"]), headers=headers)
             for c in [first, second] * (DUPLICATES // 2)]
    answers = at_once(calls)
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert first.get("/jobs", params={"dataset_id": dataset["id"]}).json()["total"] == 1
    # and the other body with that key is refused by either process
    for c in two_apis:
        resp = c.post("/jobs", json=spec(dataset["id"], epochs=3), headers=headers)
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == HEADER


def keys_stored(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0)
    finally:
        engine.dispose()


def test_the_reaper_of_a_running_api_expires_keys(tmp_path: Path, database: str):
    data_dir = tmp_path / "var"
    stack = Stack(data_dir, database, env={"MLPS_IDEMPOTENCY_TTL_S": str(TTL_S), "MLPS_REAP_EVERY_S": "0.2"})
    stack.run("migrate", "--data-dir", str(data_dir))
    port = free_port()
    try:
        stack.start("api", "api", "--port", str(port), "--data-dir", str(data_dir))
        stack.wait_ready(f"http://127.0.0.1:{port}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=admin_headers(data_dir)) as api:
            dataset = upload(api, "iris.csv").json()
            headers = {HEADER: "nightly-run"}
            sent = time.monotonic()
            first = api.post("/jobs", json=spec(dataset["id"]), headers=headers).json()
            stored = keys_stored(database)
            # The key was stored; only when this check came after its TTL may the reaper have taken it already.
            assert stored == 1 or (stored == 0 and time.monotonic() - sent >= TTL_S)
            wait_for(lambda: keys_stored(database) == 0, timeout=30, what="the reaper to delete the expired key")
            again = api.post("/jobs", json=spec(dataset["id"]), headers=headers)
            assert again.status_code == 202 and "idempotent-replayed" not in again.headers
            assert again.json()["id"] != first["id"]
    finally:
        stack.stop_all()


class FlakyProxy:
    """A real HTTP proxy in front of the server, one request per connection. The first `lose` requests are
    forwarded and answered by the server, but their answer is dropped (the connection closes without a byte);
    the next `unavailable` ones get a 503 without reaching the server; the rest pass. It records every request's
    Idempotency-Key."""

    def __init__(self, upstream: str, *, lose: int = 0, unavailable: int = 0) -> None:
        self.upstream = httpx.URL(upstream)
        self.lose, self.unavailable = lose, unavailable
        self.keys: list[str | None] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = conn.recv(65536)
            if not chunk:
                return
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [line.split(":", 1) for line in lines[1:]]
        length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
        while len(body) < length:
            body += conn.recv(65536)
        self.keys.append(next((v.strip() for k, v in headers if k.strip().lower() == HEADER.lower()), None))
        if self.unavailable and not self.lose:
            self.unavailable -= 1
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        kept = [f"{k}:{v}" for k, v in headers if k.strip().lower() not in ("connection", "host")]
        request = "\r\n".join([lines[0], f"host: {self.upstream.host}:{self.upstream.port}", "connection: close",
                               *kept]).encode("latin-1") + b"\r\n\r\n" + body
        with socket.create_connection((self.upstream.host, self.upstream.port)) as up:
            up.sendall(request)
            answer = b""
            while chunk := up.recv(65536):
                answer += chunk
        if self.lose:
            self.lose -= 1
            return  # the server answered; the client never hears it
        conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy_to(server):
    proxies = []

    def make(**faults) -> FlakyProxy:
        proxies.append(FlakyProxy(str(server.base_url), **faults))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


def test_the_client_retries_a_lost_answer_with_the_same_key_and_gets_the_first_job(server, proxy_to):
    dataset = upload(server, "iris.csv").json()
    proxy = proxy_to(lose=1)
    key = server.headers["authorization"].removeprefix("Bearer ")
    with Client(proxy.url, api_key=key) as mlps:
        job = mlps.submit_job(spec(dataset["id"]))
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1] and uuid.UUID(proxy.keys[0])
    listed = server.get("/jobs", params={"dataset_id": dataset["id"]}).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]


def test_the_client_retries_an_upload_after_503s_and_a_lost_answer(server, proxy_to, tmp_path):
    name = f"retried-{uuid.uuid4().hex[:8]}"
    proxy = proxy_to(lose=1, unavailable=2)
    key = server.headers["authorization"].removeprefix("Bearer ")
    with Client(proxy.url, api_key=key) as mlps:
        dataset = mlps.upload_dataset(dataset_path("iris.csv"), name=name, idempotency_key="upload-1")
    assert proxy.keys == ["upload-1"] * 4
    listed = server.get("/datasets", params={"limit": 500}).json()["items"]
    assert [d["id"] for d in listed if d["name"] == name] == [dataset["id"]]


def test_a_callers_own_key_makes_a_second_call_answer_the_first_search(server):
    dataset = upload(server, "iris.csv").json()
    request = {"spec": spec(dataset["id"]), "sampler": "grid", "metric": "val_accuracy", "parallelism": 1,
               "space": {"training.learning_rate": {"type": "choice", "values": [0.01, 0.05]}}}
    key = server.headers["authorization"].removeprefix("Bearer ")
    with Client(str(server.base_url), api_key=key) as mlps:
        first = mlps.start_search(request, idempotency_key=f"search-{dataset['id']}")
        again = mlps.start_search(request, idempotency_key=f"search-{dataset['id']}")
        assert again["id"] == first["id"]
        assert mlps.submit_job(spec(dataset["id"]))["id"] != mlps.submit_job(spec(dataset["id"]))["id"]
