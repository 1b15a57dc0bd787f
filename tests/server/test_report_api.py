"""GET /jobs/{id}/metrics carries the final report the plots draw: typed in the OpenAPI document, computed by a real
worker on the job's held-out rows, null for jobs that have none."""

import numpy as np
import pyarrow.csv as pacsv
import pytest
from sklearn import metrics as skm
from sqlalchemy import select

from service.schemas import JobReport
from service.server.db import make_engine, make_sessionmaker, session_scope
from service.server.storage import Storage
from service.server.tables import Job
from service.training.artifact import load_model
from service.training.pipeline import SplitSpec, predict_arrays, prepare
from tests.helpers import dataset_path, upload


def run(client, worker, spec: dict) -> dict:
    resp = client.post("/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    assert worker.run_once() == resp.json()["id"]
    job = client.get(f"/jobs/{resp.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    return job


def held_out(settings, job: dict, name: str, target: str, task: str):
    """The job's test rows, preprocessed as the worker did, and the stored model's answers for them."""
    table = pacsv.read_csv(dataset_path(name))
    features = [c for c in table.column_names if c != target]
    training = job["spec"]["training"]
    prepared = prepare(table, targets=[target], features=features, kinds=dict.fromkeys(features, "numeric"),
                       task=task, split=SplitSpec(validation_fraction=training["validation_fraction"],
                                                  test_fraction=training["test_fraction"], seed=training["seed"]))
    net, meta = load_model(Storage(settings.data_dir).model_dir(job["model_id"]))
    return prepared, predict_arrays(net, meta, prepared.X_test)


def test_the_report_is_a_typed_part_of_the_metrics_schema(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    report = schemas["JobMetrics"]["properties"]["report"]
    assert {"$ref": "#/components/schemas/JobReport"} in report["anyOf"] and {"type": "null"} in report["anyOf"]
    assert set(schemas["JobReport"]["required"]) == {"split", "n_rows", "predictions", "roc", "classes"}
    assert schemas["JobReport"]["properties"]["split"]["enum"] == ["test", "validation", "out-of-fold"]
    fpr = schemas["RocCurve"]["properties"]["fpr"]
    assert fpr["type"] == "array" and fpr["items"] == {"type": "number"}
    assert set(schemas["ClassFigures"]["required"]) == {"label", "precision", "recall", "f1", "support"}


def test_a_classifiers_report_matches_scikit_learn_on_its_test_rows(client, worker, settings):
    ds = upload(client, "iris.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"},
                               "training": {"epochs": 15, "test_fraction": 0.2}})
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    report = JobReport.model_validate(metrics["report"])
    assert report.split == "test" and report.n_rows == job["result"]["n_test"] == 30 and report.predictions is None
    prepared, answers = held_out(settings, job, "iris.csv", "species", "classification")
    y = prepared.y_test
    assert [c.label for c in report.classes] == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    for c, roc in enumerate(report.roc):
        assert roc.label == report.classes[c].label
        assert roc.auc == pytest.approx(skm.roc_auc_score(y == c, answers.probabilities[:, c]), abs=1e-6)
        fpr, tpr, _ = skm.roc_curve(y == c, answers.probabilities[:, c], drop_intermediate=False)
        assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
        assert set(zip(np.round(roc.fpr, 9), np.round(roc.tpr, 9), strict=True)) <= set(
            zip(fpr.round(9), tpr.round(9), strict=True))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, answers.classes, labels=[0, 1, 2],
                                                                         zero_division=0)
    assert [c.precision for c in report.classes] == pytest.approx(precision.tolist())
    assert [c.recall for c in report.classes] == pytest.approx(recall.tolist())
    assert [c.f1 for c in report.classes] == pytest.approx(f1.tolist())
    assert [c.support for c in report.classes] == support.tolist()
    # the headline figures and the report agree; the model's own metrics stay without the plots' data
    assert metrics["test"]["auroc"] == pytest.approx(np.mean([r.auc for r in report.roc]), abs=1e-9)
    assert "report" not in client.get(f"/models/{job['model_id']}").json()["metrics"]


def test_a_regressions_report_samples_its_test_rows_in_the_targets_units(client, worker, settings):
    ds = upload(client, "diabetes.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "progression", "model": {"type": "mlp"},
                               "training": {"epochs": 15, "test_fraction": 0.2}})
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    report = JobReport.model_validate(metrics["report"])
    assert report.split == "test" and report.roc is None and report.classes is None
    (sample,) = report.predictions
    prepared, answers = held_out(settings, job, "diabetes.csv", "progression", "regression")
    assert sample.target == "progression" and len(sample.actual) == report.n_rows == len(prepared.y_test)
    assert sample.predicted == pytest.approx(answers.values[:, 0].tolist(), rel=1e-5)
    actual = np.asarray(prepared.y_test).reshape(-1) * prepared.target["scale"][0] + prepared.target["mean"][0]
    assert sample.actual == pytest.approx(actual.tolist(), rel=1e-6)
    assert skm.r2_score(sample.actual, sample.predicted) == pytest.approx(metrics["test"]["r2"], abs=1e-4)


def test_jobs_without_a_report_answer_null(client, worker, settings):
    ds = upload(client, "iris.csv").json()
    queued = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "device": "cuda:7"}).json()
    assert client.get(f"/jobs/{queued['id']}/metrics").json()["report"] is None
    job = run(client, worker, {"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"},
                               "training": {"epochs": 3}})
    assert client.get(f"/jobs/{job['id']}/metrics").json()["report"]["split"] == "validation"
    # a job that finished before the report existed: its stored result has no report
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            row = session.scalars(select(Job).where(Job.id == job["id"])).one()
            row.result = {k: v for k, v in row.result.items() if k != "report"}
    finally:
        engine.dispose()
    old = client.get(f"/jobs/{job['id']}/metrics")
    assert old.status_code == 200 and old.json()["report"] is None
    assert old.json()["confusion_matrix"]["split"] == "validation"
    autoencoder = run(client, worker, {"dataset_id": ds["id"], "features": ["sepal_length", "sepal_width"],
                                       "model": {"type": "autoencoder", "hidden_layers": [1]},
                                       "training": {"epochs": 2}})
    assert client.get(f"/jobs/{autoencoder['id']}/metrics").json()["report"] is None
