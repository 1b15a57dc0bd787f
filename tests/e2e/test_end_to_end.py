"""Through HTTP only, against real uvicorn and real worker processes, with the shared data sets."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, TERMINAL, dataset_path, problem, upload, wait_for_job
from tests.live import free_port, running


def submit(client, spec: dict) -> dict:
    resp = client.post("/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_iris_classifier_predicts_species_names(server):
    ds = upload(server, "iris.csv").json()
    job = submit(server, {"dataset_id": ds["id"], "target": "species"})
    assert job["status"] == "queued" and job["attempts"] == 0 and job["started_at"] is None
    started = wait_for_job(server, job["id"], {"running", *TERMINAL})
    assert started["attempts"] == 1 and started["started_at"] is not None  # a worker claimed it
    job = wait_for_job(server, job["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    metrics = server.get(f"/jobs/{job['id']}/metrics").json()["epochs"]
    assert len(metrics) == job["result"]["epochs_run"] == job["progress"]["epoch"]
    model = server.get(f"/models/{job['model_id']}").json()
    assert model["metrics"]["val_accuracy"] >= 0.9
    records = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
               {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}]
    body = server.post("/predict", json={"model_id": job["model_id"], "records": records}).json()
    assert body["predictions"] == ["Iris-setosa", "Iris-virginica"]
    for probs in body["probabilities"]:
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert set(probs) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    # people's data is readable by the service's user alone: folders 0700, files 0600
    data_dir = server.data_dir
    stored = [p for p in data_dir.rglob("*") if p.name != "admin.key"]
    assert any(p.suffix == ".parquet" for p in stored) and any(p.name == "weights.safetensors" for p in stored)
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o077) == 0 for p in stored), [(p, oct(p.stat().st_mode)) for p in stored
                                                                 if p.stat().st_mode & 0o077]


def test_breast_cancer_binary_classifier(server):
    ds = upload(server, "breast_cancer.csv").json()
    job = wait_for_job(server, submit(server, {"dataset_id": ds["id"], "target": "diagnosis"})["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["task"] == "classification"
    model = server.get(f"/models/{job['model_id']}").json()
    assert model["labels"] == ["benign", "malignant"]
    assert model["metrics"]["val_accuracy"] >= 0.93
    row = server.get(f"/datasets/{ds['id']}/preview", params={"limit": 1}).json()["rows"][0]
    truth = row.pop("diagnosis")
    body = server.post("/predict", json={"model_id": job["model_id"], "records": [row]}).json()
    assert body["predictions"] == [truth]


def test_diabetes_regression_predicts_in_original_units(server):
    ds = upload(server, "diabetes.csv").json()
    job = wait_for_job(server, submit(server, {"dataset_id": ds["id"], "target": "progression"})["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["task"] == "regression"
    model = server.get(f"/models/{job['model_id']}").json()
    assert model["metrics"]["val_r2"] >= 0.3
    assert 20 < model["metrics"]["val_rmse"] < 100  # in units of the target, not standardised
    rows = server.get(f"/datasets/{ds['id']}/preview", params={"limit": 10}).json()["rows"]
    for r in rows:
        r.pop("progression")
    body = server.post("/predict", json={"model_id": job["model_id"], "records": rows}).json()
    assert body["probabilities"] is None
    assert all(20 <= p <= 400 for p in body["predictions"]), body["predictions"]


def test_same_job_twice_gives_identical_metrics(server):
    ds = upload(server, "iris.csv").json()
    spec = {"dataset_id": ds["id"], "target": "species", "model": {"dropout": 0.2},
            "training": {"epochs": 20, "seed": 11}}
    a, b = (wait_for_job(server, submit(server, spec)["id"], timeout=300) for _ in range(2))
    assert a["status"] == b["status"] == "succeeded"

    def curve(job):
        return [{k: v for k, v in e["metrics"].items() if k != "seconds"}
                for e in server.get(f"/jobs/{job['id']}/metrics").json()["epochs"]]

    assert curve(a) == curve(b) and len(curve(a)) == 20


def test_bad_input_leaves_the_service_and_earlier_data_intact(server):
    ds = upload(server, "iris.csv").json()
    job = wait_for_job(server, submit(server, {"dataset_id": ds["id"], "target": "species",
                                               "training": {"epochs": 5}})["id"])
    bad = [
        server.post("/datasets", files={"file": ("e.csv", b"")}),
        server.post("/datasets", files={"file": ("h.csv", b"a,b\n")}),
        server.post("/datasets", files={"file": ("r.csv", b"a,b\n1\n1,2,3\n")}),
        server.post("/datasets", files={"file": ("u.csv", b"a\nx\x00y\n")}),
        server.post("/datasets", files={"file": ("b.bin", bytes(range(256)))}),
        server.post("/jobs", json={"dataset_id": ds["id"], "target": "nope"}),
        server.post("/jobs", json={"dataset_id": "ds_1234567890abcdef", "target": "species"}),
        server.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "training": {"epochs": -1}}),
        server.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "model": {"hidden_layers": [0]}}),
        server.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "epochs": 3}),
        server.post("/predict", json={"model_id": job["model_id"], "records": [{"sepal_length": 1}]}),
        server.post("/predict", json={"model_id": "mdl_1234567890abcdef", "records": [{"x": 1}]}),
    ]
    assert [r.status_code for r in bad] == [422] * 6 + [404] + [422] * 4 + [404]
    for resp in bad:
        problem(resp, resp.status_code)
    assert server.get("/healthz").status_code == 200
    assert server.get(f"/datasets/{ds['id']}").json()["n_rows"] == 150
    assert server.get(f"/models/{job['model_id']}").status_code == 200


def test_two_workers_run_ten_jobs_exactly_once(tmp_path):
    data_dir = tmp_path / "var"
    subprocess.run([sys.executable, "-m", "service.cli", "migrate", "--data-dir", str(data_dir)], check=True)
    port = free_port()
    with running(["api", "--port", str(port), "--data-dir", str(data_dir)],
                 ["worker", "--devices", "cpu", "--data-dir", str(data_dir)],
                 ["worker", "--devices", "cpu", "--data-dir", str(data_dir)], data_dir=data_dir, port=port) as c:
        ds = upload(c, "iris.csv").json()
        ids = [submit(c, {"dataset_id": ds["id"], "target": "species", "training": {"epochs": 8, "seed": i}})["id"]
               for i in range(10)]
        jobs = [wait_for_job(c, i, timeout=300) for i in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 10
        assert all(j["attempts"] == 1 for j in jobs)
        for j in jobs:
            epochs = [e["epoch"] for e in c.get(f"/jobs/{j['id']}/metrics").json()["epochs"]]
            assert epochs == list(range(1, len(epochs) + 1))
        models = c.get("/models", params={"limit": 100}).json()
        assert models["total"] == 10 and sorted(m["job_id"] for m in models["items"]) == sorted(ids)


def test_readme_walkthrough_script(server):
    out = subprocess.run(["bash", str(ROOT / "examples" / "quickstart.sh"), str(dataset_path("iris.csv"))],
                         env={**os.environ, "MLPS_URL": str(server.base_url).rstrip("/"),
                              "MLPS_DATA_DIR": str(server.data_dir)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"predictions":["Iris-setosa"]' in out.stdout
