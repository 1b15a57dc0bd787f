"""What the test modules share: the data sets, API keys, uploads, problem answers, and waiting on conditions (never
on fixed sleeps)."""

import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MLPS_TEST_DATASETS", ROOT.parent / "shared" / "datasets"))
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
PROBLEM_JSON = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail", "errors", "request_id"}

T = TypeVar("T")


def dataset_path(name: str) -> Path:
    """A file of ../shared/datasets (or $MLPS_TEST_DATASETS)."""
    path = DATASETS / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared/datasets beside the repository")
    return path


def make_key(settings: Any, name: str, admin: bool = False) -> str:
    """A new API key in the settings' database (what `mlps keys create` does)."""
    from service.server.auth import create_key
    from service.server.db import make_engine, make_sessionmaker, session_scope

    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            return create_key(session, name=name, admin=admin)[1]
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: httpx.Client, name: str, content: bytes | None = None, *, filename: str | None = None,
           status: int | None = 201) -> httpx.Response:
    """POST /datasets with a file of ../shared/datasets, or with `content` named `name`.

    `client` is a TestClient (the in-process app) or an httpx.Client (a real server). The answer must have
    `status` (None: the caller checks it, e.g. with problem()).
    """
    data = content if content is not None else dataset_path(name).read_bytes()
    resp = client.post("/datasets", files={"file": (filename or name, data, "text/csv")})
    if status is not None:
        assert resp.status_code == status, resp.text
    return resp


def problem(resp: httpx.Response, status: int, fragment: str | None = None, *, field: str | None = None,
            column: str | None = None) -> dict[str, Any]:
    """The answer is one RFC 9457 problem with this status, as the server sends every error: its text holds
    `fragment`, and one of its errors names `field` (or a field below it) and `column`, where given."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM_JSON, resp.headers
    assert "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == PROBLEM_KEYS, body
    assert body["status"] == status and body["type"].startswith("/problems/") and body["title"], body
    assert body["detail"] and body["request_id"] == resp.headers["x-request-id"], body
    for err in body["errors"]:
        assert err["message"] and (err.get("field") or err.get("column")), body
    if fragment is not None:
        assert any(fragment in m for m in [body["detail"], *(e["message"] for e in body["errors"])]), body
    if field is not None:
        assert any((e.get("field") or "").startswith(field) for e in body["errors"]), body
    if column is not None:
        assert any(e.get("column") == column for e in body["errors"]), body
    return body


def wait_for(predicate: Callable[[], T], timeout: float = 120.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_job(client: httpx.Client, job_id: str, statuses: Collection[str] = TERMINAL, *, epoch: int | None = None,
                 timeout: float = 120.0) -> dict[str, Any]:
    """GET /jobs/{id} until the job's status is one of `statuses` (with `epoch`: until it has run that many epochs);
    answers the job. A job that ends in another status fails the test at once, with its error."""
    goal = f"{epoch} epochs" if epoch is not None else "/".join(sorted(statuses))

    def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if (job["progress"]["epoch"] >= epoch) if epoch is not None else (job["status"] in statuses):
            return job
        assert job["status"] not in TERMINAL, f"job {job_id} ended {job['status']} before {goal}: {job['error']}"
        return None

    return wait_for(reached, timeout=timeout, interval=0.05, what=f"job {job_id} to reach {goal}")
