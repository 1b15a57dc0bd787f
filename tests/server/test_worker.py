"""The worker with real child processes, driven through the API on one migrated SQLite file."""

import json
import threading
from datetime import datetime

import pytest
import torch

import service
from tests.helpers import problem, upload, wait_for_job

BOTH_DATABASES = True

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def trained(client, worker):
    ds = upload(client, "iris.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                     "training": {"epochs": 60}}).json()
    assert worker.run_once() == job["id"]
    return client.get(f"/jobs/{job['id']}").json()


def test_job_trains_records_every_epoch_and_stores_a_model(client, trained, settings):
    job = trained
    assert job["status"] == "succeeded", job["error"]
    assert job["device"] == "cpu" and job["attempts"] == 1
    created, started, finished = (datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started < finished
    assert job["duration_s"] == pytest.approx((finished - started).total_seconds())
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()["epochs"]
    assert [m["epoch"] for m in metrics] == list(range(1, job["result"]["epochs_run"] + 1))
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "seconds"} <= set(metrics[0]["metrics"])
    assert job["progress"]["epoch"] == job["result"]["epochs_run"]
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["task"] == "classification" and model["labels"] == ["Iris-setosa", "Iris-versicolor",
                                                                        "Iris-virginica"]
    assert model["metrics"]["epoch"] == (job["result"]["best_epoch"] or job["result"]["epochs_run"])
    folder = settings.data_dir / "models" / job["model_id"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.safetensors"]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["mlp_service"] == service.__version__
    assert meta["preprocessing"]["features"][0]["name"] == "sepal_length"
    assert client.get("/models").json()["total"] == 1


def test_predict_returns_labels_and_probabilities(client, trained):
    resp = client.post("/predict", json={"model_id": trained["model_id"],
                                         "records": [IRIS_RECORD, {**IRIS_RECORD, "petal_length": None}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["predictions"][0] == "Iris-setosa"
    assert len(body["predictions"]) == 2  # a missing value is imputed as in training
    for probs in body["probabilities"]:
        assert set(probs) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("records", "fragment"), [
    ([{k: v for k, v in IRIS_RECORD.items() if k != "petal_width"}], "record 0: column 'petal_width' is missing"),
    ([IRIS_RECORD, {**IRIS_RECORD, "sepal_width": "wide"}], "record 1: column 'sepal_width' expects a number"),
    ([], "at least 1 item"),
])
def test_bad_predict_input_is_422_and_the_model_keeps_serving(client, trained, records, fragment):
    body = problem(client.post("/predict", json={"model_id": trained["model_id"], "records": records}), 422)
    assert fragment in body["detail"] or any(fragment in e["message"] for e in body["errors"])
    ok = client.post("/predict", json={"model_id": trained["model_id"], "records": [IRIS_RECORD]})
    assert ok.status_code == 200


def test_predict_on_an_unknown_model_is_404(client):
    body = problem(client.post("/predict", json={"model_id": "mdl_0000000000000000", "records": [IRIS_RECORD]}),
                   404)
    assert "mdl_0000000000000000" in body["detail"]


def test_diverging_job_fails_once_with_an_actionable_message(client, worker):
    ds = upload(client, "diabetes.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "progression", "task": "regression",
                                     "model": {"type": "mlp", "hidden_layers": [256, 256]},
                                     "training": {"optimizer": "sgd", "learning_rate": 10.0, "epochs": 50}}).json()
    worker.run_once()
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "loss became NaN at epoch" in job["error"] and "learning rate" in job["error"]
    assert job["model_id"] is None and client.get("/models").json()["total"] == 0


def test_cancel_a_running_job_stops_its_process(client, worker):
    ds = upload(client, "breast_cancer.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "diagnosis",
                                     "model": {"type": "mlp"},
                                     "training": {"epochs": 100000, "early_stopping_patience": 0}}).json()
    runner = threading.Thread(target=worker.run_once, kwargs={"timeout_s": 120})
    runner.start()
    wait_for_job(client, job["id"], epoch=2)
    resp = client.post(f"/jobs/{job['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["cancel_requested"]
    final = wait_for_job(client, job["id"])
    assert final["status"] == "cancelled"
    runner.join(60)
    assert not runner.is_alive() and worker.slots == {}
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()["epochs"]
    assert 2 <= len(metrics) == final["progress"]["epoch"] < 100000  # it ran, and stopped early
    assert final["model_id"] is None


def _long_epoch_csv(rows: int = 60_000) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 6)).round(3)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    lines = ["a,b,c,d,e,f,y", *(",".join([*map(str, x), str(t)]) for x, t in zip(X.tolist(), y, strict=True))]
    return ("\n".join(lines) + "\n").encode()


def test_a_long_epoch_shows_its_steps_while_it_runs(client, worker):
    from service.server.api.events import read_snapshot
    from service.server.auth import Principal
    from tests.helpers import wait_for

    ds = upload(client, "long.csv", _long_epoch_csv()).json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "y", "model": {"type": "mlp"},
                                     "training": {"epochs": 50, "batch_size": 4, "validation_fraction": 0.1,
                                                  "early_stopping_patience": 0}}).json()
    runner = threading.Thread(target=worker.run_once, kwargs={"timeout_s": 300})
    runner.start()
    admin = Principal(key_id="k", owner="admin", admin=True)

    def steps_event():
        snapshot = read_snapshot(client.app.state.sessions, job["id"], admin)
        return snapshot.steps

    event = wait_for(steps_event, timeout=120, interval=0.1, what="a steps event")
    steps = event.data
    assert event.kind == "steps" and steps["job_id"] == job["id"] and steps["epoch"] == 1
    assert steps["steps"] == 54_000 // 4 and 0 < steps["step"] < steps["steps"]
    assert steps["samples_per_second"] > 0 and steps["eta_s"] > 0
    snapshot = read_snapshot(client.app.state.sessions, job["id"], admin)
    status = next(e for e in snapshot.events if e.kind == "status")
    assert status.data["progress"]["step"] is not None  # the job's view carries it too
    client.post(f"/jobs/{job['id']}/cancel")
    final = wait_for_job(client, job["id"])
    runner.join(60)
    assert final["status"] == "cancelled"
    assert read_snapshot(client.app.state.sessions, job["id"], admin).steps is None


def test_a_small_job_trains_on_one_thread_and_the_configured_count_wins(client, migrated):
    from service.server.devices import discover
    from service.server.worker import Worker

    ds = upload(client, "iris.csv").json()
    spec = {"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"}, "training": {"epochs": 3}}
    for configured, expected in ((0, 1), (2, 2)):
        w = Worker(migrated.model_copy(update={"torch_threads": configured}), discover("cpu"))
        w.start()
        try:
            job = client.post("/jobs", json=spec).json()
            assert w.run_once() == job["id"]
        finally:
            w.shutdown()
        done = client.get(f"/jobs/{job['id']}").json()
        assert done["status"] == "succeeded" and done["result"]["threads"] == expected
