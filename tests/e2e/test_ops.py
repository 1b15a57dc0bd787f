"""GET /metrics (Prometheus text) from `mlps serve`: jobs, queue, workers, durations, epochs/s, predict latency."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for_job
from tests.live import IRIS_RECORDS, admin_key, trained_iris_job


def scrape(server) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    resp = server.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_metrics_report_jobs_queue_workers_durations_and_epoch_rate(server):
    iris = trained_iris_job(str(server.base_url), admin_key(server.data_dir))
    job = server.post("/jobs", json={"dataset_id": iris["dataset_id"], "target": "species",
                                     "training": {"epochs": 3, "seed": 7}}).json()
    assert wait_for_job(server, job["id"])["status"] == "succeeded"
    samples = scrape(server)
    assert samples[("mlps_database_up", ())] == 1
    jobs = {dict(labels)["status"]: v for (name, labels), v in samples.items() if name == "mlps_jobs"}
    assert set(jobs) == {"queued", "running", "succeeded", "failed", "cancelled"}
    listed = server.get("/jobs", params={"status": "succeeded", "limit": 1}).json()["total"]
    assert jobs["succeeded"] == listed >= 2
    assert samples[("mlps_queue_depth", ())] == jobs["queued"]
    assert samples[("mlps_workers_live", ())] == 1  # `mlps serve` runs one worker
    assert samples[("mlps_epochs_per_second", ())] > 0
    assert samples[("mlps_models", ())] == server.get("/models").json()["total"] >= 2
    assert samples[("mlps_datasets", ())] == server.get("/datasets").json()["total"] >= 1
    count = samples[("mlps_job_duration_seconds_count", (("status", "succeeded"),))]
    assert count == jobs["succeeded"]
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                     if name == "mlps_job_duration_seconds_bucket" and dict(labels)["status"] == "succeeded")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (float("inf"), count)
    succeeded = server.get("/jobs", params={"status": "succeeded", "limit": 500}).json()
    assert succeeded["total"] == len(succeeded["items"])
    assert samples[("mlps_job_duration_seconds_sum", (("status", "succeeded"),))] == pytest.approx(
        sum(j["duration_s"] for j in succeeded["items"]))


def test_predict_latency_is_observed_per_endpoint_and_status(server):
    model_id = trained_iris_job(str(server.base_url), admin_key(server.data_dir))["model_id"]

    def count(endpoint: str, status: str) -> float:
        key = ("mlps_predict_latency_seconds_count", (("endpoint", endpoint), ("status", status)))
        return scrape(server).get(key, 0.0)

    before = {(e, s): count(e, s) for e in ("/predict", "/models/{model_id}/predict") for s in ("200", "422")}
    assert server.post("/predict", json={"model_id": model_id, "records": IRIS_RECORDS}).status_code == 200
    assert server.post("/predict", json={"model_id": model_id, "records": [{}]}).status_code == 422
    csv = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n"
    assert server.post(f"/models/{model_id}/predict", files={"file": ("a.csv", csv)}).status_code == 200
    server.get("/models")  # not a prediction: not observed
    assert count("/predict", "200") == before[("/predict", "200")] + 1
    assert count("/predict", "422") == before[("/predict", "422")] + 1
    assert count("/models/{model_id}/predict", "200") == before[("/models/{model_id}/predict", "200")] + 1
