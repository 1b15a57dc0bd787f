"""service.client.Client against a real `mlps serve` (uvicorn + worker processes)."""

import csv
import re

import pytest

from service.client import ApiError, Client, JobEvent, ServerUnreachable, parse_sse
from tests.helpers import dataset_path
from tests.live import IRIS_RECORDS, SHORT_TRAINING, free_port, live_key


@pytest.fixture
def mlps(live_url):
    with Client(live_url, api_key=live_key(), timeout=30) as client:
        yield client


def _event_order(event_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in event_id.split("."))


def test_base_url_and_api_key_come_from_arguments_or_the_environment(monkeypatch, tmp_path):
    # whatever folder or environment the suite runs in (e.g. beside the ./var of a `make serve`)
    monkeypatch.chdir(tmp_path)
    for name in ("MLPS_API_KEY_FILE", "MLPS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLPS_URL", "http://example.invalid:9/")
    monkeypatch.setenv("MLPS_API_KEY", "secret-from-env")
    with Client() as client:
        assert client.base_url == "http://example.invalid:9"
        assert client.headers["authorization"] == "Bearer secret-from-env"
    with Client("http://127.0.0.1:1", api_key="given") as client:
        assert client.base_url == "http://127.0.0.1:1"
        assert client.headers["authorization"] == "Bearer given"
    monkeypatch.delenv("MLPS_URL")
    monkeypatch.delenv("MLPS_API_KEY")
    with Client() as client:
        assert client.base_url == "http://127.0.0.1:8000"
        assert "authorization" not in client.headers


def test_an_unreachable_server_is_a_clear_error():
    with Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(ServerUnreachable) as caught:
        client.datasets()
    assert "cannot reach the MLP Service" in str(caught.value)


def test_dataset_upload_list_show_preview_delete(mlps):
    ds = mlps.upload_dataset(dataset_path("iris.csv"), name="flowers")
    assert ds["id"].startswith("ds_") and ds["name"] == "flowers" and ds["n_rows"] == 150
    assert [c["name"] for c in ds["columns"]][-1] == "species"
    assert ds["id"] in [d["id"] for d in mlps.datasets(limit=500)["items"]]
    assert mlps.dataset(ds["id"]) == ds
    preview = mlps.preview(ds["id"], limit=3)
    assert len(preview["rows"]) == 3 and preview["columns"] == [c["name"] for c in ds["columns"]]
    mlps.delete_dataset(ds["id"])
    with pytest.raises(ApiError) as caught:
        mlps.dataset(ds["id"])
    assert caught.value.status == 404 and ds["id"] in caught.value.detail


def test_server_errors_carry_the_problem_details(mlps):
    ds = mlps.upload_dataset(dataset_path("iris.csv"))
    with pytest.raises(ApiError) as caught:
        mlps.submit_job({"dataset_id": ds["id"], "target": "colour"})
    err = caught.value
    assert (err.status, err.title, err.type) == (422, "Invalid input", "/problems/invalid-input")
    assert "'colour'" in err.detail and "sepal_length" in err.detail
    assert err.errors[0]["field"] == "target" and err.errors[0]["column"] == "colour"
    assert re.fullmatch(r"[0-9a-f]{16}", err.request_id)
    assert str(err).startswith("422 Invalid input: target column 'colour'")


def test_wait_follows_the_live_events_to_the_end(mlps, iris_job):
    ds = mlps.dataset(iris_job["dataset_id"])
    job = mlps.submit_job({"dataset_id": ds["id"], "target": "species", "training": SHORT_TRAINING})
    events: list[JobEvent] = []
    final = mlps.wait(job["id"], timeout=120, on_update=events.append)
    assert final["status"] == "succeeded" and mlps.model(final["model_id"])["job_id"] == job["id"]
    assert events[0].kind == "status" and events[-1].is_terminal and events[-1].data["status"] == "succeeded"
    epochs = [e.data["epoch"] for e in events if e.kind == "epoch"]
    assert epochs == list(range(1, final["progress"]["epoch"] + 1))
    assert all(e.data["epochs"] == 10 and "val_loss" in e.data["metrics"] for e in events if e.kind == "epoch")
    orders = [_event_order(e.id) for e in events]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)


def test_wait_by_polling_reports_the_same_epochs(mlps, iris_job):
    events: list[JobEvent] = []
    final = mlps.wait(iris_job["id"], timeout=30, on_update=events.append, stream=False, poll_interval=0.05)
    assert final["status"] == "succeeded"
    assert [e.data["epoch"] for e in events if e.kind == "epoch"] == list(range(1, final["progress"]["epoch"] + 1))
    assert events[-1].kind == "status" and events[-1].data["status"] == "succeeded"


def test_jobs_listing_metrics_and_models(mlps, iris_job):
    assert iris_job["id"] in [j["id"] for j in mlps.jobs(status="succeeded", limit=500)["items"]]
    assert iris_job["id"] not in [j["id"] for j in mlps.jobs(status="failed", limit=500)["items"]]
    assert mlps.job(iris_job["id"])["model_id"] == iris_job["model_id"]
    metrics = mlps.metrics(iris_job["id"])
    assert len(metrics["epochs"]) == iris_job["progress"]["epoch"]
    assert metrics["confusion_matrix"]["labels"] == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    model = mlps.model(iris_job["model_id"])
    assert model["task"] == "classification" and model["job_id"] == iris_job["id"]
    assert model["id"] in [m["id"] for m in mlps.models(limit=500)["items"]]


def test_predict_records_and_a_csv_file_agree(mlps, iris_job, tmp_path):
    answer = mlps.predict(iris_job["model_id"], records=IRIS_RECORDS)
    assert answer["predictions"] == [max(probs, key=probs.get) for probs in answer["probabilities"]]
    for probs in answer["probabilities"]:
        assert set(probs) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    rows = tmp_path / "flowers.csv"
    with rows.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*IRIS_RECORDS[0], "name"])
        writer.writeheader()
        for i, record in enumerate(IRIS_RECORDS):
            writer.writerow({**record, "name": f"flower {i}"})
    out = tmp_path / "scored.csv"
    assert mlps.predict_csv(iris_job["model_id"], rows, out) == 2
    scored = list(csv.DictReader(out.open()))
    assert [r["name"] for r in scored] == ["flower 0", "flower 1"]
    assert [r["prediction"] for r in scored] == answer["predictions"]
    for row, probs in zip(scored, answer["probabilities"], strict=True):
        assert float(row["p_Iris-setosa"]) == pytest.approx(probs["Iris-setosa"], rel=1e-6)
    assert not (tmp_path / "scored.csv.part").exists()


def test_predict_csv_errors_are_api_errors_and_leave_no_file(mlps, iris_job, tmp_path):
    rows = tmp_path / "bad.csv"
    rows.write_text("sepal_length,sepal_width\n1,2\n")
    out = tmp_path / "out.csv"
    with pytest.raises(ApiError) as caught:
        mlps.predict_csv(iris_job["model_id"], rows, out)
    assert caught.value.status == 422 and "petal_length" in caught.value.detail
    assert not out.exists()


def test_cancel_then_wait_reports_cancelled(mlps, iris_job):
    job = mlps.submit_job({"dataset_id": iris_job["dataset_id"], "target": "species",
                           "model": {"type": "mlp"}, "training": {"epochs": 100000, "early_stopping_patience": 0}})
    assert mlps.cancel(job["id"])["cancel_requested"]
    final = mlps.wait(job["id"], timeout=60)
    assert final["status"] == "cancelled" and final["model_id"] is None
    with pytest.raises(ApiError) as caught:
        mlps.cancel(job["id"])
    assert caught.value.status == 409


def test_wait_gives_up_after_its_timeout(mlps, iris_job):
    # No worker has cuda:7, so the job stays queued.
    job = mlps.submit_job({"dataset_id": iris_job["dataset_id"], "target": "species", "device": "cuda:7"})
    try:
        with pytest.raises(TimeoutError, match="still queued"):
            mlps.wait(job["id"], timeout=0.5)
    finally:
        mlps.cancel(job["id"])


def test_wait_on_an_unknown_job_is_404(mlps):
    with pytest.raises(ApiError) as caught:
        mlps.wait("job_0000000000000000", timeout=5)
    assert caught.value.status == 404


def test_embed_returns_bottleneck_codes(mlps, iris_job):
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    job = mlps.submit_job({"dataset_id": iris_job["dataset_id"], "features": features,
                           "model": {"type": "autoencoder", "hidden_layers": [3, 2]}, "training": {"epochs": 3}})
    job = mlps.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    codes = mlps.embed(job["model_id"], records=IRIS_RECORDS)["embeddings"]
    assert len(codes) == 2 and all(len(code) == 2 for code in codes)
    with pytest.raises(ApiError) as caught:
        mlps.embed(iris_job["model_id"], records=IRIS_RECORDS)
    assert caught.value.status == 422 and "autoencoder" in caught.value.detail


def test_health_readiness_and_prometheus_text(mlps, iris_job):
    assert mlps.health() == {"status": "ok"}
    assert mlps.ready() is True
    assert len(mlps.workers()["items"]) == 1  # `mlps serve` runs one worker
    text = mlps.server_metrics()
    assert 'mlps_jobs{status="succeeded"}' in text and "mlps_queue_depth" in text


def test_parse_sse_handles_comments_multiline_data_and_ids():
    stream = ["retry: 1000", "", ": keep-alive", "", "id: 1.0.1", "event: status", "data: {\"a\":", "data: 1}", "",
              "data: plain", ""]
    assert list(parse_sse(iter(stream))) == [("status", "{\"a\":\n1}", "1.0.1"), ("message", "plain", None)]
