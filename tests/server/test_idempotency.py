"""Idempotency-Key on POST /jobs, /datasets and /searches, in-process over a real migrated database (SQLite, and
PostgreSQL when one is set): a retry answers the first response and creates nothing (rows counted), another body is
a 422, owners are apart, a bad header is a 422 naming it, which failures keep the key, the wait for a request still
in progress, expiry by the reaper."""

import uuid

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select

from service.server import idempotency
from service.server.api import create_app
from service.server.config import Settings
from service.server.db import alembic_config, make_engine, make_sessionmaker, session_scope
from service.server.fleet import Reaper
from service.server.idempotency import Claim, Fingerprint
from service.server.tables import Dataset, IdempotencyKey, Job, Search
from tests.helpers import bearer, dataset_path, make_key, problem, upload

BOTH_DATABASES = True
HEADER = "Idempotency-Key"


def count(settings: Settings, table: type) -> int:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)
    finally:
        engine.dispose()


def key() -> dict[str, str]:
    return {HEADER: str(uuid.uuid4())}


@pytest.fixture
def iris(client):
    return upload(client, "iris.csv").json()


def job_spec(iris, epochs: int = 3):
    return {"dataset_id": iris["id"], "target": "species", "training": {"epochs": epochs}}


def test_a_retried_job_submission_answers_the_first_response_and_queues_one_job(client, iris, migrated):
    headers = key()
    first = client.post("/jobs", json=job_spec(iris), headers=headers)
    again = client.post("/jobs", json=job_spec(iris), headers=headers)
    assert first.status_code == again.status_code == 202, again.text
    assert again.content == first.content and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"] == f"/jobs/{first.json()['id']}"
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert count(migrated, Job) == 1
    # without a key, the same body is a new job
    assert client.post("/jobs", json=job_spec(iris)).json()["id"] != first.json()["id"]
    assert count(migrated, Job) == 2


def test_a_retried_upload_answers_the_first_data_set_and_stores_one(client, migrated):
    headers = key()
    data = dataset_path("iris.csv").read_bytes()
    first = client.post("/datasets", files={"file": ("iris.csv", data, "text/csv")}, data={"name": "flowers"},
                        headers=headers)
    again = client.post("/datasets", files={"file": ("iris.csv", data, "text/csv")}, data={"name": "flowers"},
                        headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert count(migrated, Dataset) == 1
    other_bytes = client.post("/datasets", files={"file": ("iris.csv", data + b"5.0,3.0,1.5,0.2,Iris-setosa\n",
                                                           "text/csv")}, data={"name": "flowers"}, headers=headers)
    problem(other_bytes, 422, "body differs", field=HEADER)
    other_name = client.post("/datasets", files={"file": ("iris.csv", data, "text/csv")}, data={"name": "iris"},
                             headers=headers)
    problem(other_name, 422, "body differs", field=HEADER)
    assert count(migrated, Dataset) == 1


def test_a_retried_search_answers_the_first_search_and_starts_one(client, iris, migrated):
    request = {"spec": job_spec(iris), "sampler": "grid", "metric": "val_accuracy", "parallelism": 1,
               "space": {"training.learning_rate": {"type": "choice", "values": [0.01, 0.05]}}}
    headers = key()
    first = client.post("/searches", json=request, headers=headers)
    again = client.post("/searches", json=request, headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/searches/{first.json()['id']}"
    assert count(migrated, Search) == 1 and count(migrated, Job) == 1  # one search, its one first trial


def test_the_same_key_with_another_body_or_route_is_a_422_naming_the_header(client, iris, migrated):
    headers = key()
    assert client.post("/jobs", json=job_spec(iris), headers=headers).status_code == 202
    body = problem(client.post("/jobs", json=job_spec(iris, epochs=4), headers=headers), 422, field=HEADER)
    assert "the body differs from the first request's" in body["detail"]
    # a byte-level difference is another body too: the fingerprint is the sha256 of the bytes sent
    spaced = client.post("/jobs", content=b'{"dataset_id": "%s", "target": "species", "training": {"epochs": 3}} '
                         % iris["id"].encode(), headers={**headers, "content-type": "application/json"})
    problem(spaced, 422, "body differs", field=HEADER)
    problem(client.post("/datasets", files={"file": ("iris.csv", b"a,b\n1,2\n", "text/csv")}, headers=headers),
            422, "first used for POST /jobs", field=HEADER)
    assert count(migrated, Job) == 1 and count(migrated, Dataset) == 1  # the iris fixture's


def test_keys_are_per_owner(client, iris, migrated):
    headers = key()
    mine = client.post("/jobs", json=job_spec(iris), headers=headers)
    other = TestClient(client.app, headers=bearer(make_key(migrated, "alice")))
    theirs = upload(other, "iris.csv").json()
    # alice's same key with another body is no conflict, and her request creates her own job
    resp = other.post("/jobs", json=job_spec(theirs), headers=headers)
    assert resp.status_code == 202 and "idempotent-replayed" not in resp.headers
    assert resp.json()["id"] != mine.json()["id"]
    # her retry replays her job, not mine
    assert other.post("/jobs", json=job_spec(theirs), headers=headers).json()["id"] == resp.json()["id"]
    assert count(migrated, Job) == 2


@pytest.mark.parametrize(("value", "message"), [
    ("", "the key is empty"),
    ('""', "the key is empty"),
    ("k" * 256, "more than the 255 accepted"),
    ('"unterminated', 'a quoted key must end with "'),
    ("two words", "a key with spaces must be quoted"),
    ("clé".encode("latin-1"), "printable ASCII"),
    ("ключ".encode(), "printable ASCII"),
])
def test_a_bad_key_is_a_422_naming_the_header(client, iris, migrated, value, message):
    problem(client.post("/jobs", json=job_spec(iris), headers={HEADER: value}), 422, message, field=HEADER)
    assert count(migrated, Job) == 0 and count(migrated, IdempotencyKey) == 0


def test_two_key_headers_are_a_422(client, iris):
    resp = client.post("/jobs", json=job_spec(iris), headers=[(HEADER, "a"), (HEADER, "b")])
    problem(resp, 422, "send one Idempotency-Key header", field=HEADER)


def test_a_quoted_key_and_the_same_key_bare_are_one_key(client, iris, migrated):
    first = client.post("/jobs", json=job_spec(iris), headers={HEADER: '"nightly \\"run\\" 7"'})
    assert first.status_code == 202
    again = client.post("/jobs", json=job_spec(iris), headers={HEADER: 'nightly "run" 7'.replace(" ", "-")})
    assert "idempotent-replayed" not in again.headers  # a different key: 'nightly-"run"-7'
    bare = client.post("/jobs", json=job_spec(iris), headers={HEADER: "abc-1"})
    quoted = client.post("/jobs", json=job_spec(iris), headers={HEADER: '"abc-1"'})
    assert quoted.headers["idempotent-replayed"] == "true" and quoted.json()["id"] == bare.json()["id"]
    assert count(migrated, Job) == 3


def test_a_4xx_about_the_request_is_kept_and_replayed_with_this_requests_id(client, migrated):
    headers = key()
    spec = {"dataset_id": "ds_missing", "target": "species"}
    first = problem(client.post("/jobs", json=spec, headers=headers), 404, field="dataset_id")
    again = client.post("/jobs", json=spec, headers=headers)
    body = problem(again, 404, field="dataset_id")
    assert again.headers["idempotent-replayed"] == "true"
    assert body["detail"] == first["detail"] and body["request_id"] != first["request_id"]
    assert count(migrated, IdempotencyKey) == 1


def test_a_body_that_fails_validation_keeps_no_key(client, iris, migrated):
    headers = key()
    problem(client.post("/jobs", json={**job_spec(iris), "epochs": 3}, headers=headers), 422, field="epochs")
    assert count(migrated, IdempotencyKey) == 0
    # the key is free: the corrected body goes through with it
    assert client.post("/jobs", json=job_spec(iris), headers=headers).status_code == 202


@pytest.fixture
def app_with(migrated):
    """An app over the same database with some settings changed, sending the admin key."""
    clients = []

    def make(**changes) -> TestClient:
        c = TestClient(create_app(migrated.model_copy(update=changes)),
                       headers=bearer(make_key(migrated, "admin", admin=True)))
        clients.append(c.__enter__())
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_a_limit_answer_does_not_keep_the_key(app_with, migrated):
    api = app_with(max_active_jobs=1)
    iris = upload(api, "iris.csv").json()
    running = api.post("/jobs", json=job_spec(iris)).json()
    headers = key()
    problem(api.post("/jobs", json=job_spec(iris), headers=headers), 429)
    assert count(migrated, IdempotencyKey) == 0
    assert api.post(f"/jobs/{running['id']}/cancel").status_code == 202
    retried = api.post("/jobs", json=job_spec(iris), headers=headers)  # the same key, once the limit allows it
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers


def _refuse(settings: Settings, operation: str) -> None:
    """Make the database refuse every later `operation` (UPDATE or DELETE) on idempotency keys, as a full disk or a
    lost connection would: a real error from the database, raised inside the callbacks that run after the request's
    own transaction."""
    engine = make_engine(settings.database_url)
    statements = ([f"CREATE TRIGGER refuse_keys BEFORE {operation} ON idempotency_keys "
                   "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END"]
                  if engine.dialect.name == "sqlite" else
                  ["CREATE FUNCTION refuse_keys() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'the disk is full'; "
                   "END $$ LANGUAGE plpgsql",
                   f"CREATE TRIGGER refuse_keys BEFORE {operation} ON idempotency_keys FOR EACH ROW "
                   "EXECUTE FUNCTION refuse_keys()"])
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_a_kept_4xx_stays_the_answer_when_storing_it_fails(client, migrated):
    _refuse(migrated, "UPDATE")
    spec = {"dataset_id": "ds_missing", "target": "species"}
    problem(client.post("/jobs", json=spec, headers=key()), 404, field="dataset_id")
    assert count(migrated, IdempotencyKey) == 1  # left pending: it expires as abandoned


def test_a_429_stays_the_answer_when_giving_the_key_up_fails(app_with, migrated):
    api = app_with(max_active_jobs=1)
    iris = upload(api, "iris.csv").json()
    api.post("/jobs", json=job_spec(iris))
    _refuse(migrated, "DELETE")
    problem(api.post("/jobs", json=job_spec(iris), headers=key()), 429)
    assert count(migrated, IdempotencyKey) == 1


def _claim_first(settings: Settings, owner: str, key_value: str, fingerprint: Fingerprint,
                 pending_s: float) -> Claim:
    engine = make_engine(settings.database_url)
    try:
        claim = idempotency.try_claim(sessions=make_sessionmaker(engine), owner=owner, key=key_value,
                                      fingerprint=fingerprint, pending_s=pending_s)
    finally:
        engine.dispose()
    assert isinstance(claim, Claim)
    return claim


def test_a_request_whose_key_is_still_in_progress_waits_then_answers_409(app_with, migrated):
    api = app_with(idempotency_wait_s=0.3)
    iris = upload(api, "iris.csv").json()
    body = api.build_request("POST", "/jobs", json=job_spec(iris)).content
    _claim_first(migrated, "admin", "busy", Fingerprint.of_body("POST", "/jobs", body), pending_s=600)
    resp = api.post("/jobs", content=body, headers={HEADER: "busy", "content-type": "application/json"})
    problem(resp, 409, "still in progress", field=HEADER)
    assert resp.headers["retry-after"] == "1" and count(migrated, Job) == 0


def test_an_abandoned_request_gives_its_key_to_the_retry(app_with, migrated):
    api = app_with()
    iris = upload(api, "iris.csv").json()
    body = api.build_request("POST", "/jobs", json=job_spec(iris)).content
    # a request that took the key and died (its pending time already over)
    _claim_first(migrated, "admin", "crashed", Fingerprint.of_body("POST", "/jobs", body), pending_s=0.001)
    resp = api.post("/jobs", content=body, headers={HEADER: "crashed", "content-type": "application/json"})
    assert resp.status_code == 202 and count(migrated, Job) == 1
    assert api.post("/jobs", content=body, headers={HEADER: "crashed", "content-type": "application/json"}
                    ).headers["idempotent-replayed"] == "true"


def test_the_reaper_removes_expired_keys_and_the_key_is_then_new(app_with, migrated):
    api = app_with(idempotency_ttl_s=0.001)
    iris = upload(api, "iris.csv").json()
    headers = key()
    first = api.post("/jobs", json=job_spec(iris), headers=headers).json()
    engine = make_engine(migrated.database_url)
    try:
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as s:
            assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
        Reaper(sessions, max_attempts=3, every_s=60).round()
        with session_scope(sessions) as s:
            assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    finally:
        engine.dispose()
    again = api.post("/jobs", json=job_spec(iris), headers=headers)
    assert again.status_code == 202 and again.json()["id"] != first["id"] and count(migrated, Job) == 2


def test_the_three_routes_document_the_header(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/datasets", "/searches"):
        params = paths[path]["post"]["parameters"]
        header = next(p for p in params if p["name"] == HEADER)
        assert header["in"] == "header" and not header.get("required") and "retry" in header["description"]
    assert not any(p["name"] == HEADER for p in paths["/jobs"]["get"].get("parameters", []))


def test_the_migration_goes_down_and_up(migrated):
    config = alembic_config(migrated.database_url)
    engine = make_engine(migrated.database_url)
    try:
        command.downgrade(config, "20261201_0008")
        assert "idempotency_keys" not in inspect(engine).get_table_names()
        command.upgrade(config, "head")
        assert "idempotency_keys" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
