"""Webhooks in-process over a real migrated database: endpoints per owner, the outbox written with the job or search
change, deliveries to a real HTTP receiver on 127.0.0.1 that verifies each signature with the Standard Webhooks
reference library, retries with backoff, 410 Gone, the SSRF rules, and every bad input answered with its field."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from service.server import queue, webhooks
from service.server.api import create_app
from service.server.db import make_engine, make_sessionmaker, session_scope
from service.server.errors import InvalidInput
from tests.helpers import bearer, make_key, problem, upload, wait_for

BOTH_DATABASES = True  # the outbox and the claims run on SQLite and on PostgreSQL (SKIP LOCKED)
SHORT = {"epochs": 3, "batch_size": 16, "learning_rate": 0.01}
SPEC_VECTOR = {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
               "timestamp": 1614265330, "body": '{"test": 2432232314}',
               "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers each POST with the next status of `script` (then 204) and keeps
    what came: headers, body, and whether the Standard Webhooks library verified it with `secret`."""

    def __init__(self, port: int = 0) -> None:
        self.script: list[int] = []
        self.secret: str | None = None
        self.location: str | None = None  # sent as Location (with a 3xx of the script)
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verified = Webhook(receiver.secret).verify(body, headers) if receiver.secret else None
                except Exception as exc:  # the library's WebhookVerificationError and malformed headers
                    verified = f"invalid: {exc}"
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else 204
                    receiver.received.append({"headers": headers, "body": body, "verified": verified,
                                              "status": status})
                self.send_response(status)
                if receiver.location is not None:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooked(migrated):
    """The settings of an API that may deliver to 127.0.0.1, with retries a few milliseconds apart."""
    return migrated.model_copy(update={"webhook_allow": "127.0.0.1", "webhook_poll_s": 0.05,
                                       "webhook_retry_base_s": 0.05, "webhook_timeout_s": 2.0,
                                       "webhook_max_attempts": 3})


@pytest.fixture
def api(hooked):
    """The app with its lifespan (and so its deliverer) running; clients for alice, bob and an admin."""
    app = create_app(hooked)
    with TestClient(app, headers=bearer(make_key(hooked, "alice"))) as alice:
        yield {"app": app, "alice": alice, "bob": TestClient(app, headers=bearer(make_key(hooked, "bob"))),
               "admin": TestClient(app, headers=bearer(make_key(hooked, "root", admin=True)))}


def add(client: TestClient, receiver: Receiver, events: list[str]) -> dict[str, Any]:
    resp = client.post("/webhooks", json={"url": receiver.url, "events": events, "description": "ci"})
    assert resp.status_code == 201, resp.text
    created = resp.json()
    receiver.secret = created["secret"]
    return created


def deliveries(client: TestClient, webhook_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/webhooks/{webhook_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def ended(client: TestClient, webhook_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The endpoint's deliveries once `count` of them have ended."""
    def done() -> list[dict[str, Any]] | None:
        items = deliveries(client, webhook_id)
        return items if sum(d["state"] != "pending" for d in items) >= count else None

    return wait_for(done, timeout=30, what=f"{count} deliveries of {webhook_id} to end")


# ---------------------------------------------------------------- signing


def test_the_signature_is_the_specifications_test_vector():
    v = SPEC_VECTOR
    assert webhooks.sign(v["secret"], v["id"], v["timestamp"], v["body"]) == v["signature"]
    # the reference library accepts a fresh secret of ours and what we sign with it
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    import time
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": webhooks.sign(secret, "msg_1", now, '{"a": 1}')}
    assert Webhook(secret).verify('{"a": 1}', headers) == {"a": 1}


def test_retries_back_off_five_times_longer_each_time_with_jitter():
    import random
    rng = random.Random(0)
    delays = [webhooks.retry_delay(n, 5.0, rng) for n in range(1, 8)]
    for delay, nominal in zip(delays, [5, 25, 125, 625, 3125, 3600, 3600], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal


# ---------------------------------------------------------------- jobs and searches


def test_a_succeeded_job_is_one_signed_delivery_with_the_jobs_figures(api, receiver, worker):
    alice = api["alice"]
    created = add(alice, receiver, ["job.succeeded"])
    assert created["events"] == ["job.succeeded"] and created["enabled"] and created["owner"] == "alice"
    shown = alice.get(f"/webhooks/{created['id']}").json()
    assert "secret" not in shown and shown["url"] == receiver.url
    assert all("secret" not in w for w in alice.get("/webhooks").json()["items"])
    other = alice.post("/webhooks", json={"url": receiver.url + "/failed", "events": ["job.failed"]}).json()

    ds = upload(alice, "iris.csv").json()
    job = alice.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "training": SHORT}).json()
    assert alice.patch(f"/jobs/{job['id']}", json={"name": "nightly"}).status_code == 200
    assert worker.run_once() == job["id"]
    job = alice.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job["error"]

    [delivery] = ended(alice, created["id"])
    [got] = receiver.received
    assert isinstance(got["verified"], dict), got["verified"]
    assert got["headers"]["webhook-id"] == delivery["event_id"] and got["headers"]["webhook-id"].startswith("msg_")
    assert got["headers"]["content-type"] == "application/json"
    body = json.loads(got["body"])
    assert body["type"] == "job.succeeded" and body["timestamp"]
    assert body["data"] == {"id": job["id"], "status": "succeeded", "name": "nightly", "dataset_id": ds["id"],
                            "search_id": None, "model_id": job["model_id"], "metrics": job["metrics"],
                            "error": None, "finished_at": body["data"]["finished_at"]}
    assert body["data"]["metrics"]["val_accuracy"] == job["metrics"]["val_accuracy"]
    assert delivery["type"] == "job.succeeded" and delivery["state"] == "delivered"
    assert delivery["attempt_count"] == 1 and delivery["next_attempt_at"] is None
    assert [(a["attempt"], a["status_code"], a["error"]) for a in delivery["attempts"]] == [(1, 204, None)]
    assert deliveries(alice, other["id"]) == []  # it wants job.failed only


def test_a_receiver_that_fails_twice_then_succeeds_gets_three_attempts_of_one_event(api, receiver):
    alice = api["alice"]
    created = add(alice, receiver, ["job.succeeded"])
    receiver.script = [500, 500]
    resp = alice.post(f"/webhooks/{created['id']}/test")
    assert resp.status_code == 202, resp.text
    queued = resp.json()
    assert queued["type"] == "webhook.test" and queued["state"] == "pending" and queued["attempt_count"] == 0

    [delivery] = ended(alice, created["id"])
    assert delivery["state"] == "delivered" and delivery["attempt_count"] == 3
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 500), (2, 500), (3, 204)]
    assert [a["error"] for a in delivery["attempts"]] == ["the receiver answered 500"] * 2 + [None]
    assert all(a["duration_ms"] >= 0 and a["at"] for a in delivery["attempts"])
    assert len(receiver.received) == 3
    assert {r["headers"]["webhook-id"] for r in receiver.received} == {queued["event_id"]}
    assert all(isinstance(r["verified"], dict) for r in receiver.received)
    assert json.loads(receiver.received[0]["body"])["data"] == {"webhook_id": created["id"],
                                                                "message": "a test delivery, sent on request"}


def test_a_receiver_that_always_fails_is_given_up_after_max_attempts(api, receiver):
    alice = api["alice"]
    created = add(alice, receiver, ["job.failed"])
    receiver.script = [503] * 10
    alice.post(f"/webhooks/{created['id']}/test")
    [delivery] = ended(alice, created["id"])
    assert delivery["state"] == "failed" and delivery["attempt_count"] == 3 and delivery["finished_at"]
    assert len(receiver.received) == 3


def test_410_gone_disables_the_endpoint_until_it_is_enabled_again(api, receiver):
    alice = api["alice"]
    created = add(alice, receiver, ["job.failed"])
    receiver.script = [410]
    alice.post(f"/webhooks/{created['id']}/test")
    [delivery] = ended(alice, created["id"])
    assert delivery["state"] == "failed" and delivery["attempt_count"] == 1
    shown = alice.get(f"/webhooks/{created['id']}").json()
    assert shown["enabled"] is False and "410 Gone" in shown["disabled_reason"]
    problem(alice.post(f"/webhooks/{created['id']}/test"), 409, "disabled", field="enabled")
    enabled = alice.patch(f"/webhooks/{created['id']}", json={"enabled": True}).json()
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
    assert alice.post(f"/webhooks/{created['id']}/test").status_code == 202
    assert ended(alice, created["id"], 2)[0]["state"] == "delivered"


def test_failed_and_cancelled_jobs_and_a_finished_search_are_delivered(api, receiver, hooked):
    alice = api["alice"]
    created = add(alice, receiver, ["job.failed", "job.cancelled", "search.finished"])
    ds = upload(alice, "iris.csv").json()
    spec = {"dataset_id": ds["id"], "target": "species", "training": SHORT}

    # queued -> cancelled at once, by the user
    cancelled = alice.post("/jobs", json=spec).json()
    assert alice.post(f"/jobs/{cancelled['id']}/cancel").json()["status"] == "cancelled"
    # running -> failed, as a worker reports a user error through the queue
    failed = alice.post("/jobs", json=spec).json()
    engine = make_engine(hooked.database_url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        claim = queue.claim_next_job(session=s, worker_id="w1", device_requests=["auto"], lease_s=30)
    assert claim is not None and claim.job_id == failed["id"]
    with session_scope(sessions) as s:
        queue.fail(session=s, job_id=claim.job_id, token=claim.token, error="the loss became NaN at epoch 2")
    # a job whose lease ran out on its last allowed attempt fails through the reaper
    lost = alice.post("/jobs", json=spec).json()
    with session_scope(sessions) as s:
        claim = queue.claim_next_job(session=s, worker_id="w2", device_requests=["auto"], lease_s=-1)
    with session_scope(sessions) as s:
        assert queue.reap_expired(session=s, max_attempts=1) == [lost["id"]]
    engine.dispose()

    search = alice.post("/searches", json={
        "spec": spec, "space": {"training.learning_rate": {"type": "choice", "values": [0.01, 0.05]}},
        "sampler": "grid", "metric": "val_accuracy", "parallelism": 1}).json()
    assert alice.post(f"/searches/{search['id']}/cancel").status_code == 202

    items = ended(alice, created["id"], 5)
    assert {d["state"] for d in items} == {"delivered"}
    bodies = [json.loads(r["body"]) for r in receiver.received]
    assert all(isinstance(r["verified"], dict) for r in receiver.received)
    by_job = {b["data"]["id"]: b for b in bodies if b["type"].startswith("job.")}
    assert by_job[cancelled["id"]]["type"] == "job.cancelled"
    assert by_job[cancelled["id"]]["data"]["error"] == "cancelled by request"
    assert by_job[failed["id"]]["type"] == "job.failed"
    assert by_job[failed["id"]]["data"]["error"] == "the loss became NaN at epoch 2"
    assert by_job[lost["id"]]["type"] == "job.failed" and "lost its worker" in by_job[lost["id"]]["data"]["error"]
    trial = next(b for b in bodies if b["data"].get("search_id") == search["id"])
    assert trial["type"] == "job.cancelled"  # the search's queued trial, cancelled with it
    [finished] = [b for b in bodies if b["type"] == "search.finished"]
    assert finished["data"]["id"] == search["id"] and finished["data"]["status"] == "cancelled"
    assert finished["data"]["best"] is None and finished["data"]["error"] == "cancelled by request"


# ---------------------------------------------------------------- owners


def test_webhooks_are_their_owners_and_an_admin_sees_them_all(api, receiver, worker):
    alice, bob, admin = api["alice"], api["bob"], api["admin"]
    created = add(alice, receiver, ["job.succeeded"])
    bobs = bob.post("/webhooks", json={"url": receiver.url + "/bob", "events": ["job.succeeded"]}).json()
    wid = created["id"]
    for method, path, body in [("GET", f"/webhooks/{wid}", None), ("PATCH", f"/webhooks/{wid}", {"enabled": False}),
                               ("POST", f"/webhooks/{wid}/test", None), ("GET", f"/webhooks/{wid}/deliveries", None),
                               ("DELETE", f"/webhooks/{wid}", None)]:
        found = problem(bob.request(method, path, json=body), 404, f"no webhook with id '{wid}'", field="webhook_id")
        assert found["errors"] == [{"field": "webhook_id", "message": "unknown webhook"}]
    assert [w["id"] for w in bob.get("/webhooks").json()["items"]] == [bobs["id"]]
    assert [w["id"] for w in alice.get("/webhooks").json()["items"]] == [wid]
    assert {w["id"] for w in admin.get("/webhooks").json()["items"]} == {wid, bobs["id"]}
    assert admin.get(f"/webhooks/{wid}").json()["owner"] == "alice"

    # alice's job reaches alice's endpoint only
    ds = upload(alice, "iris.csv").json()
    job = alice.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "training": SHORT}).json()
    assert worker.run_once() == job["id"]
    ended(alice, wid)
    assert [r["headers"]["webhook-id"] for r in receiver.received] == [deliveries(alice, wid)[0]["event_id"]]
    assert deliveries(bob, bobs["id"]) == []
    assert alice.delete(f"/webhooks/{wid}").status_code == 204
    problem(alice.get(f"/webhooks/{wid}"), 404, field="webhook_id")


# ---------------------------------------------------------------- bad input and SSRF


@pytest.mark.parametrize(("body", "field", "fragment"), [
    ({"url": "https://hooks.example.invalid/x", "events": []}, "events", "at least 1"),
    ({"url": "https://hooks.example.invalid/x", "events": ["job.started"]}, "events.0", "'job.succeeded'"),
    ({"url": "https://hooks.example.invalid/x"}, "events", "required"),
    ({"events": ["job.failed"]}, "url", "required"),
    ({"url": "https://hooks.example.invalid/x", "events": ["job.failed"], "secret": "mine"}, "secret", "unknown"),
    ({"url": "not a url", "events": ["job.failed"]}, "url", "the scheme must be https"),
    ({"url": "ftp://hooks.example.invalid/x", "events": ["job.failed"]}, "url", "not 'ftp'"),
    ({"url": "https:///x", "events": ["job.failed"]}, "url", "names no host"),
    ({"url": "https://a:b@hooks.example.invalid/x", "events": ["job.failed"]}, "url", "credentials"),
    ({"url": "https://hooks.example.invalid:99999/x", "events": ["job.failed"]}, "url", "not a URL"),
    ({"url": "http://hooks.example.invalid/x", "events": ["job.failed"]}, "url", "plain http is accepted only"),
    # host names that name resolution or the HTTP client would reject at delivery
    ({"url": "https://a..b/x", "events": ["job.failed"]}, "url", "not a valid host name"),
    ({"url": f"https://{'a' * 64}.example.com/x", "events": ["job.failed"]}, "url", "not a valid host name"),
    ({"url": "https://.a.com/x", "events": ["job.failed"]}, "url", "not a valid host name"),
    ({"url": "https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/x", "events": ["job.failed"]}, "url",
     "Invalid IDNA hostname"),
])
def test_bad_webhook_requests_are_422_naming_the_field(client, body, field, fragment):
    problem(client.post("/webhooks", json=body), 422, fragment, field=field)


@pytest.mark.parametrize(("url", "fragment"), [
    ("https://127.0.0.1/x", "127.0.0.1, a loopback address"),
    ("https://127.8.9.10:8443/x", "a loopback address"),
    ("https://10.1.2.3/x", "a private address"),
    ("https://192.168.1.1/x", "a private address"),
    ("https://172.16.0.5/x", "a private address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
    ("https://100.64.0.1/x", "not a public address"),
    ("https://0.0.0.0/x", "unspecified"),
    ("https://224.0.0.1/x", "multicast"),
    ("https://240.0.0.1/x", "reserved"),
    ("https://[::1]/x", "::1, a loopback address"),
    ("https://[::ffff:127.0.0.1]/x", "a loopback address"),
    ("https://[::ffff:10.0.0.1]/x", "a private address"),
    ("https://[fe80::1]/x", "link-local"),
    ("https://[fd00::1]/x", "a private address"),
    ("https://[fec0::1]/x", "a site-local address"),
    ("https://[2002:7f00:1::]/x", "a loopback address"),  # 6to4 carrying 127.0.0.1
    ("https://[2002:a00:1::]/x", "a private address"),  # 6to4 carrying 10.0.0.1
    ("https://[2001::80ff:fefe]/x", "a loopback address"),  # Teredo, its client 127.0.1.1
    ("https://localhost:9000/x", "localhost resolves to 127.0.0.1, a loopback address"),
    ("https://hooks.localhost/x", "a loopback name"),
])
def test_non_public_addresses_are_refused_by_default(client, url, fragment):
    body = problem(client.post("/webhooks", json={"url": url, "events": ["job.failed"]}), 422, fragment, field="url")
    assert "MLPS_WEBHOOK_ALLOW" in body["errors"][0]["message"]


def test_patch_checks_what_it_changes(client):
    created = client.post("/webhooks", json={"url": "https://hooks.example.invalid/x", "events": ["job.failed"]})
    assert created.status_code == 201, created.text  # a name that does not resolve now is checked at each attempt
    wid = created.json()["id"]
    problem(client.patch(f"/webhooks/{wid}", json={"url": "https://[::1]/x"}), 422, "loopback", field="url")
    problem(client.patch(f"/webhooks/{wid}", json={"events": []}), 422, "at least 1", field="events")
    problem(client.patch(f"/webhooks/{wid}", json={"enabled": None}), 422, "may not be null", field="enabled")
    problem(client.patch(f"/webhooks/{wid}", json={"colour": "red"}), 422, "unknown", field="colour")
    changed = client.patch(f"/webhooks/{wid}", json={"events": ["search.finished", "search.finished"],
                                                     "description": "searches"}).json()
    assert changed["events"] == ["search.finished"] and changed["description"] == "searches"
    assert changed["url"] == "https://hooks.example.invalid/x"


def test_the_allow_list_takes_names_wildcards_addresses_and_ranges(migrated):
    allow = webhooks.AllowList.parse("hooks.example.com, *.internal.example,10.0.0.0/8,[fd00::1]")
    assert allow.allows_name("hooks.example.com") and allow.allows_name("ci.internal.example")
    assert not allow.allows_name("internal.example") and not allow.allows_name("evilinternal.example")
    settings = migrated.model_copy(update={"webhook_allow": "*.internal.example,10.0.0.0/8"})
    webhooks.check_url("http://10.2.3.4:8080/hook", settings)  # allowed explicitly: http too
    webhooks.check_url("https://ci.internal.example/hook", settings)
    with pytest.raises(InvalidInput, match="a private address"):
        webhooks.check_url("https://192.168.0.1/hook", settings)
    with pytest.raises(InvalidInput, match="plain http"):
        webhooks.check_url("http://hooks.example.invalid/hook", settings)


def test_each_attempt_checks_the_address_again(hooked, receiver):
    """An endpoint accepted while its host was allowed is refused at delivery once it no longer is (as a name that
    now resolves elsewhere would be): the attempt is recorded and nothing reaches the receiver."""
    alice = TestClient(create_app(hooked), headers=bearer(make_key(hooked, "alice")))  # no lifespan: no deliverer
    https = receiver.url.replace("http://", "https://")  # so that the scheme passes and the address is checked
    created = alice.post("/webhooks", json={"url": https, "events": ["job.failed"]}).json()
    queued = alice.post(f"/webhooks/{created['id']}/test").json()
    engine = make_engine(hooked.database_url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        [claimed] = webhooks.claim(session=s, lease_s=60)
    with session_scope(sessions) as s:
        assert webhooks.claim(session=s, lease_s=60) == []  # held: no other process takes it
    assert claimed.delivery_id == queued["id"] and claimed.attempt == 1
    outcome = webhooks.attempt(claimed, hooked.model_copy(update={"webhook_allow": ""}))
    assert outcome.status_code is None and outcome.error.startswith("refused: 127.0.0.1, a loopback address")
    with session_scope(sessions) as s:
        assert webhooks.record(session=s, claimed=claimed, outcome=outcome, settings=hooked) == "pending"
    engine.dispose()
    assert receiver.received == []
    [logged] = deliveries(alice, created["id"])
    assert logged["state"] == "pending" and logged["attempt_count"] == 1 and logged["next_attempt_at"]
    assert logged["attempts"][0]["error"].startswith("refused: 127.0.0.1, a loopback address")


def test_the_migration_matches_the_tables_and_reverses(tmp_path):
    """What Alembic creates for webhooks is what the ORM declares, and its downgrade removes it again."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from service.server.db import Base, alembic_config, migrate

    ours = ("webhook_endpoints", "webhook_events", "webhook_deliveries")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if any(table in repr(d) for table in ours)] == []
    command.downgrade(alembic_config(url), "20261201_0007")
    assert not set(ours) & set(inspect(engine).get_table_names())
    command.upgrade(alembic_config(url), "20261201_0008")
    assert set(ours) <= set(inspect(engine).get_table_names())
    engine.dispose()


# ---------------------------------------------------------------- attempts that misbehave


class Trickler:
    """A receiver on 127.0.0.1 that reads the request, sends a status line, then one header byte every 0.5 s for
    up to a minute: every read finishes within any per-read timeout, the answer never does."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(120):
                    conn.sendall(b"x")
                    time.sleep(0.5)
            except OSError:
                self.closed.set()  # the deliverer ended the connection

    def close(self) -> None:
        self.sock.close()


def _claim_one(settings, url: str) -> tuple[TestClient, dict[str, Any], webhooks.ClaimedDelivery]:
    """An endpoint of alice's at `url` with one test delivery, claimed (no deliverer runs: no lifespan)."""
    alice = TestClient(create_app(settings), headers=bearer(make_key(settings, "alice")))
    created = alice.post("/webhooks", json={"url": url, "events": ["job.failed"]})
    assert created.status_code == 201, created.text
    alice.post(f"/webhooks/{created.json()['id']}/test")
    engine = make_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        [claimed] = webhooks.claim(session=s, lease_s=60)
    engine.dispose()
    return alice, created.json(), claimed


def _record(settings, claimed: webhooks.ClaimedDelivery, outcome: webhooks.Outcome) -> str:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            return webhooks.record(session=s, claimed=claimed, outcome=outcome, settings=settings)
    finally:
        engine.dispose()


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline(hooked):
    settings = hooked.model_copy(update={"webhook_timeout_s": 1.5})
    trickler = Trickler()
    try:
        alice, created, claimed = _claim_one(settings, trickler.url)
        started = time.monotonic()
        outcome = webhooks.attempt(claimed, settings)
        took = time.monotonic() - started
        assert trickler.closed.wait(10), "the connection was not ended"
    finally:
        trickler.close()
    assert 1.5 <= took < 4.0, took  # the deadline, not the trickle's minute
    assert outcome.status_code is None and outcome.error == "timed out: no complete answer within 1.5 s"
    assert _record(settings, claimed, outcome) == "pending"
    [logged] = deliveries(alice, created["id"])
    assert logged["state"] == "pending" and logged["attempt_count"] == 1 and logged["next_attempt_at"]
    assert logged["attempts"][0]["error"].startswith("timed out")


def test_a_round_claims_no_more_than_it_sends_at_once(hooked):
    """Each claimed delivery starts at once: later waves would outlive the claim's lease."""
    alice = TestClient(create_app(hooked), headers=bearer(make_key(hooked, "alice")))
    created = alice.post("/webhooks", json={"url": "https://hooks.example.invalid/x", "events": ["job.failed"]})
    for _ in range(webhooks.DELIVERY_THREADS + 2):
        assert alice.post(f"/webhooks/{created.json()['id']}/test").status_code == 202
    engine = make_engine(hooked.database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        assert len(webhooks.claim(session=s, lease_s=60)) == webhooks.DELIVERY_THREADS
    with session_scope(make_sessionmaker(engine)) as s:
        assert len(webhooks.claim(session=s, lease_s=60)) == 2
    engine.dispose()
    assert webhooks.Deliverer(make_sessionmaker(engine), hooked).lease_s > hooked.webhook_timeout_s


def test_a_stored_url_the_http_client_refuses_is_a_recorded_attempt_not_a_stuck_round(hooked):
    """A URL stored before the rules refused it (here: a fullwidth host name, valid in IDNA 2003, not in IDNA
    2008) fails its attempt, and the round goes on."""
    alice = TestClient(create_app(hooked), headers=bearer(make_key(hooked, "alice")))
    created = alice.post("/webhooks", json={"url": "https://hooks.example.invalid/x", "events": ["job.failed"]}).json()
    alice.post(f"/webhooks/{created['id']}/test")
    engine = make_engine(hooked.database_url)
    sessions = make_sessionmaker(engine)
    from sqlalchemy import update

    from service.server.tables import WebhookEndpoint
    with session_scope(sessions) as s:
        s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == created["id"])
                  .values(url="https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/x"))
    assert webhooks.Deliverer(sessions, hooked).round() == 1
    engine.dispose()
    [logged] = deliveries(alice, created["id"])
    assert logged["state"] == "pending" and logged["attempt_count"] == 1
    assert logged["attempts"][0]["error"].startswith("refused: not a URL (Invalid IDNA hostname")


def test_a_record_under_a_lost_claim_writes_nothing(hooked):
    alice, created, first = _claim_one(hooked, "https://hooks.example.invalid/x")
    engine = make_engine(hooked.database_url)
    from sqlalchemy import update

    from service.server.db import utcnow
    from service.server.tables import WebhookDelivery
    with session_scope(make_sessionmaker(engine)) as s:  # the first claim's lease ran out; another process took it
        s.execute(update(WebhookDelivery).values(claimed_until=utcnow()))
    with session_scope(make_sessionmaker(engine)) as s:
        [second] = webhooks.claim(session=s, lease_s=60)
    engine.dispose()
    assert second.token != first.token
    assert _record(hooked, first, webhooks.Outcome(204, None, 1.0)) == "lost"
    [logged] = deliveries(alice, created["id"])
    assert logged["state"] == "pending" and logged["attempts"] == []
    assert _record(hooked, second, webhooks.Outcome(500, "the receiver answered 500", 1.0)) == "pending"
    assert [a["status_code"] for a in deliveries(alice, created["id"])[0]["attempts"]] == [500]


def test_redirects_are_not_followed(api, receiver):
    alice = api["alice"]
    elsewhere = Receiver()
    try:
        created = add(alice, receiver, ["job.failed"])
        receiver.script = [302] * 3
        receiver.location = elsewhere.url
        alice.post(f"/webhooks/{created['id']}/test")
        [delivery] = ended(alice, created["id"])
    finally:
        elsewhere.close()
    assert delivery["state"] == "failed" and delivery["attempt_count"] == 3
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(302, "the receiver answered 302")] * 3
    assert len(receiver.received) == 3 and elsewhere.received == []
