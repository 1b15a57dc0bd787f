"""GET /jobs/{id}/events (Server-Sent Events) read over real HTTP from `mlps serve`, and a keep-alive check."""

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from tests.helpers import bearer, make_key, problem, upload, wait_for, wait_for_job
from tests.live import free_port

LONG_TRAINING = {"epochs": 100000, "early_stopping_patience": 0}


def sse(response: httpx.Response, timeout: float = 120.0) -> Iterator[dict]:
    """Each event as {"id", "event", "data"} (data JSON-decoded), or {"comment": text} for a comment line."""
    deadline = time.monotonic() + timeout  # keep-alives every 15 s would keep a stuck stream open forever
    fields: dict = {}
    for line in response.iter_lines():
        assert time.monotonic() < deadline, f"the event stream did not end within {timeout} s"
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line == "":
            if "data" in fields:
                yield {"id": fields.get("id"), "event": fields.get("event", "message"),
                       "data": json.loads(fields["data"])}
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def order(event_id: str) -> tuple[int, int, int]:
    cycle, epoch, phase = (int(v) for v in event_id.split("."))
    return cycle, epoch, phase


def events_until_end(client: httpx.Client, job_id: str, headers: dict | None = None) -> list[dict]:
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e for e in sse(response) if "comment" not in e]


@pytest.fixture(scope="module")
def iris_dataset(server) -> dict:
    return upload(server, "iris.csv").json()


def submit(server, dataset: dict, training: dict) -> dict:
    resp = server.post("/jobs", json={"dataset_id": dataset["id"], "target": "species", "model": {"type": "mlp"},
                                      "training": training})
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_a_job_streams_its_status_and_every_epoch_until_it_ends(server, iris_dataset):
    job = submit(server, iris_dataset, {"epochs": 8, "early_stopping_patience": 0})
    events = events_until_end(server, job["id"])
    assert events[0]["event"] == "status" and events[0]["data"]["status"] in ("queued", "running")
    final = events[-1]
    assert final["event"] == "status" and final["data"]["status"] == "succeeded" and final["data"]["model_id"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["data"]["epoch"] for e in epochs] == list(range(1, 9))
    assert all(e["data"]["epochs"] == 8 and e["data"]["job_id"] == job["id"] for e in epochs)
    stored = server.get(f"/jobs/{job['id']}/metrics").json()["epochs"]
    assert [e["data"]["metrics"] for e in epochs] == [row["metrics"] for row in stored]
    ids = [order(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["data"]["status"] for e in events if e["event"] == "status"][-1] == "succeeded"
    # Connecting to a finished job replays its epochs and final status, with the same ids.
    assert events_until_end(server, job["id"]) == [e for e in events if order(e["id"]) >= order(epochs[0]["id"])]


def test_reconnecting_with_last_event_id_resumes_without_losing_or_repeating(server, iris_dataset):
    job = submit(server, iris_dataset, LONG_TRAINING)
    first: list[dict] = []
    with server.stream("GET", f"/jobs/{job['id']}/events") as response:
        for event in sse(response):
            if "comment" not in event:
                first.append(event)
            if event.get("event") == "epoch" and event["data"]["epoch"] == 3:
                break  # drop the connection part-way
    last_id = first[-1]["id"]
    # Epochs go on while no one listens.
    wait_for_job(server, job["id"], epoch=6, timeout=60)
    second: list[dict] = []
    with server.stream("GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": last_id}) as response:
        for event in sse(response):
            if "comment" in event:
                continue
            second.append(event)
            if event["event"] == "epoch" and event["data"]["epoch"] == 8:
                assert server.post(f"/jobs/{job['id']}/cancel").status_code == 202
    assert second[0]["event"] == "epoch" and second[0]["data"]["epoch"] == 4  # no status repeated, no gap
    assert second[-1]["event"] == "status" and second[-1]["data"]["status"] == "cancelled"
    together = first + second
    ids = [order(e["id"]) for e in together]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    epochs = [e["data"]["epoch"] for e in together if e["event"] == "epoch"]
    final = server.get(f"/jobs/{job['id']}").json()
    assert epochs == list(range(1, final["progress"]["epoch"] + 1))
    # Resuming after the final event: nothing more, and the stream ends at once.
    assert events_until_end(server, job["id"], {"Last-Event-ID": second[-1]["id"]}) == []


def test_unknown_job_and_malformed_last_event_id_are_problems(server, iris_dataset):
    problem(server.get("/jobs/job_0000000000000000/events"), 404, "job_0000000000000000")
    job = submit(server, iris_dataset, {"epochs": 1})
    resp = server.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "yesterday"})
    assert problem(resp, 422)["errors"][0]["field"] == "Last-Event-ID"


@pytest.fixture
def api_without_workers(migrated):
    """The API alone (no worker, so jobs stay queued) in uvicorn on a thread, with a 0.2 s keep-alive."""
    from service.server.api import create_app

    app = create_app(migrated)
    app.state.events_keepalive_s = 0.2
    port = free_port()
    uvi = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvi.run, daemon=True)
    thread.start()
    wait_for(lambda: uvi.started, timeout=30, what="uvicorn to start")
    headers = bearer(make_key(migrated, "admin", admin=True))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as client:
        yield client
    uvi.should_exit = True
    thread.join(30)


def test_a_waiting_stream_sends_keep_alives_and_ends_when_the_job_is_cancelled(api_without_workers):
    client = api_without_workers
    resp = client.post("/jobs", json={"dataset_id": upload(client, "iris.csv").json()["id"], "target": "species"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    seen: list[dict] = []
    with client.stream("GET", f"/jobs/{job['id']}/events") as response:
        assert response.headers["cache-control"] == "no-cache"
        for event in sse(response):
            seen.append(event)
            if event.get("comment") == "keep-alive" and len([e for e in seen if "comment" in e]) == 2:
                assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    statuses = [(e["id"], e["data"]["status"]) for e in seen if "comment" not in e]
    assert statuses == [("1.0.0", "queued"), ("1.0.3", "cancelled")]
    assert [e["comment"] for e in seen if "comment" in e][:2] == ["keep-alive", "keep-alive"]
