"""/metrics on the in-process app (no worker): per-app registries, queue figures, and the predict middleware."""

import asyncio

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.server.api import create_app
from service.server.api.ops import RequestLayer, predict_endpoint
from tests.helpers import bearer, make_key, upload


def samples(client) -> dict[tuple[str, tuple], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_each_app_has_its_own_registry(migrated):
    headers = bearer(make_key(migrated, "admin", admin=True))
    with TestClient(create_app(migrated), headers=headers) as one, \
            TestClient(create_app(migrated), headers=headers) as two:
        assert one.app.state.metrics_registry is not two.app.state.metrics_registry
        one.post("/predict", json={"model_id": "mdl_0000000000000000", "records": [{}]})
        key = ("mlps_predict_latency_seconds_count", (("endpoint", "/predict"), ("status", "404")))
        assert samples(one)[key] == 1
        assert key not in samples(two)


def test_queued_jobs_show_as_queue_depth_without_workers(client):
    ds = upload(client, "iris.csv").json()
    for _ in range(2):
        assert client.post("/jobs", json={"dataset_id": ds["id"], "target": "species"}).status_code == 202
    figures = samples(client)
    assert figures[("mlps_queue_depth", ())] == 2 and figures[("mlps_jobs", (("status", "queued"),))] == 2
    assert figures[("mlps_jobs", (("status", "running"),))] == 0
    assert figures[("mlps_workers_live", ())] == 0 and figures[("mlps_epochs_per_second", ())] == 0
    assert figures[("mlps_job_duration_seconds_count", (("status", "succeeded"),))] == 0
    assert figures[("mlps_datasets", ())] == 1


def test_openmetrics_is_served_when_asked_for(client):
    resp = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")


def test_only_prediction_paths_are_timed():
    assert predict_endpoint("/predict") == "/predict"
    assert predict_endpoint("/models/mdl_0123456789abcdef/predict") == "/models/{model_id}/predict"
    assert predict_endpoint("/models/mdl_0123456789abcdef") is None
    assert predict_endpoint("/jobs/job_1/metrics") is None


def _run(app, path: str = "/predict") -> tuple[list[dict], Exception | None]:
    """Drive the middleware around `app` for one POST; (the messages that reached the server, the error raised)."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "test", labelnames=["endpoint", "status"], registry=registry)
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main() -> Exception | None:
        try:
            await RequestLayer(app, 1 << 20, histogram)({"type": "http", "method": "POST", "path": path,
                                                          "headers": []}, receive, send)
        except RuntimeError as exc:
            return exc
        return None

    error = asyncio.run(main())
    assert registry.get_sample_value("t_seconds_count", {"endpoint": "/predict", "status": "200"}) == 1
    return sent, error


def test_a_stream_that_fails_part_way_is_not_closed_cleanly():
    async def failing(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a,b\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})  # as an outer wrapper would
        raise RuntimeError("scoring broke")

    async def fine(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    broken, error = _run(failing)
    assert str(error) == "scoring broke"  # the server sees the error and breaks the connection
    assert [m.get("more_body") for m in broken if m["type"] == "http.response.body"] == [True]
    whole, error = _run(fine)
    assert error is None and whole[-1] == {"type": "http.response.body", "body": b"ok", "more_body": False}


def test_every_request_passes_one_middleware(client):
    assert [m.cls for m in client.app.user_middleware] == [RequestLayer]
    resp = client.get("/datasets", headers={"x-request-id": "one-layer"})
    assert resp.headers["x-request-id"] == "one-layer"
    too_big = client.post("/predict", content=b"{" + b" " * (client.app.state.settings.max_json_bytes + 1) + b"}",
                          headers={"content-type": "application/json", "x-request-id": "too-big"})
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "too-big"
    assert too_big.json()["errors"][0]["field"] == "body"
