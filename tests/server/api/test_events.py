"""/jobs/{id}/events on the in-process app: ids, resume points and errors (live streams: tests/e2e/test_events.py)."""

import pytest

from service.server.api.events import EventId
from service.server.errors import InvalidInput
from tests.helpers import problem, upload


def test_event_ids_order_like_the_events_and_round_trip():
    queued, running, epoch_1, epoch_10, final = (EventId(1, 0, 0), EventId(1, 0, 1), EventId(1, 1, 2),
                                                 EventId(1, 10, 2), EventId(2, 0, 3))
    assert queued < running < epoch_1 < epoch_10 < final
    assert EventId(2, 0, 0) > epoch_10  # queued again after a lost attempt comes after its epochs
    assert EventId.parse(str(epoch_10)) == epoch_10 and str(epoch_10) == "1.10.2"
    for bad in ("", "1.2", "a.b.c", "1.2.3.4", "-1.0.0"):
        with pytest.raises(InvalidInput):
            EventId.parse(bad)


def test_a_job_cancelled_in_the_queue_streams_one_final_event(client):
    ds = upload(client, "iris.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species"}).json()
    client.post(f"/jobs/{job['id']}/cancel")
    resp = client.get(f"/jobs/{job['id']}/events")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.startswith("retry: 1000\n\n")
    blocks = [b for b in resp.text.split("\n\n") if b.startswith("id:")]
    assert len(blocks) == 1
    assert blocks[0].startswith("id: 1.0.3\nevent: status\ndata: {") and '"status":"cancelled"' in blocks[0]
    again = client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "1.0.3"})
    assert again.text == "retry: 1000\n\n"


def test_unknown_job_is_404(client):
    body = problem(client.get("/jobs/job_0000000000000000/events"), 404, "job_0000000000000000")
    assert body["title"] == "Not found"
