"""Every model type and training option through POST /jobs, trained by a real worker process."""

import io
import json
import zipfile

import numpy as np
import pytest

from tests.helpers import problem, upload


def run(client, worker, spec: dict) -> dict:
    resp = client.post("/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    assert worker.run_once() == resp.json()["id"]
    return client.get(f"/jobs/{resp.json()['id']}").json()


def test_perceptron_on_xor_says_it_cannot_converge(client, worker):
    ds = upload(client, "xor.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "y", "model": {"type": "perceptron"},
                               "training": {"epochs": 100, "validation_fraction": 0}})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["converged"] is False and "not linearly separable" in job["result"]["note"]
    accs = [e["metrics"]["train_accuracy"] for e in client.get(f"/jobs/{job['id']}/metrics").json()["epochs"]]
    assert len(accs) == 100 and max(accs) <= 0.75
    records = [{"x1": a, "x2": b} for a in (0, 1) for b in (0, 1)]
    body = client.post("/predict", json={"model_id": job["model_id"], "records": records}).json()
    assert body["probabilities"] is None and set(body["predictions"]) <= {0, 1}
    # the kept weights score the truth table as training said they would: three of four rows at best
    right = sum(p == t for p, t in zip(body["predictions"], [0, 1, 1, 0], strict=True))
    assert right / 4 == job["metrics"]["train_accuracy"] <= 0.75


def test_mlp_solves_xor_and_predicts_the_truth_table(client, worker):
    ds = upload(client, "xor.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "y",
                               "model": {"type": "mlp", "hidden_layers": [4], "activation": "tanh", "dropout": 0},
                               "training": {"epochs": 500, "batch_size": 4, "learning_rate": 0.05,
                                            "validation_fraction": 0}})
    assert job["status"] == "succeeded", job["error"]
    records = [{"x1": a, "x2": b} for a in (0, 1) for b in (0, 1)]
    body = client.post("/predict", json={"model_id": job["model_id"], "records": records}).json()
    assert body["predictions"] == [0, 1, 1, 0]


def test_autoencoder_embeds_and_scores_reconstruction(client, worker):
    ds = upload(client, "iris.csv").json()
    body = problem(client.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                              "model": {"type": "autoencoder"}}), 422)
    assert "without a target" in body["detail"]
    job = run(client, worker, {"dataset_id": ds["id"], "features": ["sepal_length", "sepal_width", "petal_length",
                                                                    "petal_width"],
                               "model": {"type": "autoencoder", "hidden_layers": [8, 2]},
                               "training": {"epochs": 30}})
    assert job["status"] == "succeeded" and job["task"] == "autoencoder"
    record = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    codes = client.post(f"/models/{job['model_id']}/embed", json={"records": [record, record]}).json()
    assert len(codes["embeddings"]) == 2 and len(codes["embeddings"][0]) == 2
    assert codes["embeddings"][0] == codes["embeddings"][1]
    outlier = {"sepal_length": 20.0, "sepal_width": -5.0, "petal_length": 30.0, "petal_width": 10.0}
    scores = client.post("/predict", json={"model_id": job["model_id"], "records": [record, outlier]}).json()
    assert scores["probabilities"] is None
    typical, odd = scores["predictions"]
    assert 0 < typical < 10 * job["metrics"]["train_loss"] < odd  # a flower far from any in iris scores high


def test_image_arrays_train_and_predict_with_inputs(client, worker):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 60, size=(80, 1, 8, 8), dtype=np.uint8)
    y = np.array(["dark", "bright"] * 40)
    X[y == "bright"] += 150
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    ds = upload(client, "digits.npz", buf.getvalue()).json()
    assert ds["format"] == "npz" and ds["columns"][0] == {**ds["columns"][0], "kind": "tensor", "shape": [1, 8, 8]}
    job = run(client, worker, {"dataset_id": ds["id"], "target": "y", "training": {"epochs": 20}})
    assert job["status"] == "succeeded", job["error"]
    body = client.post("/predict", json={"model_id": job["model_id"], "inputs": X[:4].tolist()}).json()
    assert body["predictions"] == y[:4].tolist()
    bad = problem(client.post("/predict", json={"model_id": job["model_id"], "inputs": X[:2, 0].tolist()}), 422)
    assert "shaped [n, 1, 8, 8]" in bad["detail"] and "received [2, 8, 8]" in bad["detail"]
    problem(client.post("/predict", json={"model_id": job["model_id"], "records": [{"X": 1}]}), 422)


def test_pickled_npz_is_refused(client):
    buf = io.BytesIO()
    np.savez(buf, X=np.array([{"a": 1}], dtype=object))
    body = problem(upload(client, "evil.npz", buf.getvalue(), status=None), 422)
    assert "could not be read safely" in body["detail"]


MIXED_CSV = b"""age,colour,smoker,income,outcome
34,red,true,52000,yes
,blue,false,48000,no
51,,true,,yes
28,green,false,39000,no
45,red,true,61000,yes
39,blue,false,45000,no
62,green,true,70000,yes
23,red,false,,no
47,blue,true,58000,yes
31,green,false,41000,no
"""


def test_missing_values_and_text_categories_train_and_predict(client, worker):
    header, body = MIXED_CSV.split(b"\n", 1)
    ds = upload(client, "mixed.csv", header + b"\n" + body * 3).json()
    kinds = {c["name"]: c["kind"] for c in ds["columns"]}
    assert kinds == {"age": "numeric", "colour": "categorical", "smoker": "boolean", "income": "numeric",
                     "outcome": "categorical"}
    job = run(client, worker, {"dataset_id": ds["id"], "target": "outcome", "training": {"epochs": 30}})
    assert job["status"] == "succeeded", job["error"]
    model = client.get(f"/models/{job['model_id']}").json()
    assert {"name": "colour", "kind": "categorical", "categories": ["blue", "green", "red"]} in model["features"]
    record = {"age": 40, "colour": "purple", "smoker": True, "income": None}
    body = client.post("/predict", json={"model_id": job["model_id"], "records": [record]})
    assert body.status_code == 200 and body.json()["predictions"] == ["yes"]  # every smoker in the data says yes


def test_options_reach_training_and_test_split_is_reported_apart(client, worker):
    ds = upload(client, "iris.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "species",
                               "model": {"type": "mlp", "hidden_layers": [32], "activation": "gelu",
                                         "batch_norm": True},
                               "training": {"epochs": 12, "optimizer": "sgd", "learning_rate": 0.1, "nesterov": True,
                                            "lr_schedule": {"type": "step", "step_size": 5, "gamma": 0.5},
                                            "class_weights": "balanced", "gradient_clip_norm": 1.0,
                                            "test_fraction": 0.2, "early_stopping_patience": 0}})
    assert job["status"] == "succeeded", job["error"]
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    lrs = [e["metrics"]["lr"] for e in metrics["epochs"]]
    assert lrs[0] == 0.1 and lrs[5] == 0.05 and lrs[10] == 0.025
    assert {"accuracy", "f1_macro", "auroc", "log_loss"} <= set(metrics["test"])
    cm = metrics["confusion_matrix"]
    assert cm["split"] == "test" and cm["labels"] == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    assert sum(map(sum, cm["matrix"])) == job["result"]["n_test"] == 30
    assert client.get(f"/models/{job['model_id']}").json()["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"]


@pytest.mark.parametrize(("dataset", "patch", "field", "fragment"), [
    ("iris.csv", {"target": "species", "model": {"type": "perceptron"}}, "model.type", "binary targets only"),
    ("diabetes.csv", {"target": "progression", "model": {"type": "perceptron"}}, "model.type", "binary targets only"),
    ("iris.csv", {"target": "species", "model": {"activation": "threshold"}}, "model.activation", "zero gradient"),
    ("iris.csv", {"model": {"type": "mlp"}}, "target", "needs a target"),
    ("diabetes.csv", {"target": "progression", "training": {"class_weights": "balanced"}}, "training.class_weights",
     "classification only"),
    ("iris.csv", {"target": ["species", "sepal_length"]}, "task", "numeric target"),
    ("iris.csv", {"target": "species", "training": {"lr_schedule": {"type": "exponential"}}},
     "training.lr_schedule", "does not match any of the expected tags"),
    ("iris.csv", {"target": "species", "training": {"validation_fraction": 0.5, "test_fraction": 0.4}},
     "training.test_fraction", "at least 20%"),
    ("iris.csv", {"target": "species", "training": {"class_weights": {"Iris-rose": 2}}}, None, None),
])
def test_impossible_combinations_are_422(client, dataset, patch, field, fragment):
    ds = upload(client, dataset).json()
    resp = client.post("/jobs", json={"dataset_id": ds["id"], **patch})
    if field is None:  # an unknown label in class_weights is found when the job runs; the spec itself is valid
        assert resp.status_code == 202
        return
    body = problem(resp, 422)
    assert any(e.get("field", "").startswith(field) for e in body["errors"]), body
    assert fragment in body["detail"] or any(fragment in e["message"] for e in body["errors"]), body


IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_the_default_ensemble_reports_its_kept_members_and_predicts_with_their_spread(client, worker):
    ds = upload(client, "iris.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "species",
                               "model": {"members": 8, "hidden_layers": [16]}, "training": {"epochs": 30}})
    assert job["status"] == "succeeded", job["error"]
    ensemble = job["result"]["ensemble"]
    # a linear model per fold and strength beside the MLP members
    assert ensemble["members_trained"] == 8 and ensemble["linear_models"] == 4 * 5
    assert ensemble["members"] == len(ensemble["kept"]) <= 8 + 20
    assert ensemble["estimate"] == "out-of-fold" and ensemble["folds"] == 4
    assert sum(m["weight"] for m in ensemble["kept"]) == pytest.approx(1.0, abs=1e-5)
    # the headline is the kept ensemble's out-of-fold figure, not the last epoch's
    assert job["metrics"]["val_accuracy"] >= 0.8 and job["metrics"] != job["latest_metrics"]
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert metrics["confusion_matrix"]["split"] == "out-of-fold"
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 150  # every row scored once, held out
    assert "member_val_loss" not in metrics["epochs"][0]["metrics"]
    with_members = client.get(f"/jobs/{job['id']}/metrics", params={"members": "true"}).json()
    assert len(with_members["epochs"][0]["metrics"]["member_val_loss"]) == 8
    body = client.post("/predict", json={"model_id": job["model_id"], "uncertainty": True,
                                         "records": [IRIS_RECORD, {**IRIS_RECORD, "petal_length": 4.8,
                                                                   "petal_width": 1.7}]}).json()
    assert body["predictions"][0] == "Iris-setosa"
    sure, unsure = body["uncertainty"]
    assert set(sure) == {"std", "disagreement"} and sure["disagreement"] == 0  # every member says setosa
    assert unsure["std"] >= sure["std"]  # a flower between two species splits the members more
    plain = client.post("/predict", json={"model_id": job["model_id"], "records": [IRIS_RECORD]}).json()
    assert plain["uncertainty"] is None and plain["probabilities"][0] == body["probabilities"][0]


def test_regression_ensemble_spread_is_in_the_targets_units(client, worker):
    ds = upload(client, "diabetes.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "progression",
                               "model": {"members": 8, "hidden_layers": [16]}, "training": {"epochs": 20}})
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["val_r2"] > 0.2
    record = {"age": 50, "sex": 1, "bmi": 25.0, "bp": 90.0, "s1": 180, "s2": 100.0, "s3": 50.0, "s4": 4.0,
              "s5": 4.5, "s6": 90}
    body = client.post("/predict", json={"model_id": job["model_id"], "records": [record],
                                         "uncertainty": True}).json()
    assert 0 < body["uncertainty"][0]["std"] < 150  # progression spans about 25–350


def test_uncertainty_needs_an_ensemble(client, worker):
    ds = upload(client, "iris.csv").json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"},
                               "training": {"epochs": 3}})
    body = problem(client.post("/predict", json={"model_id": job["model_id"], "records": [IRIS_RECORD],
                                                 "uncertainty": True}), 422)
    assert body["errors"][0]["field"] == "uncertainty" and "ensemble" in body["detail"]


@pytest.mark.parametrize(("patch", "field", "fragment"), [
    ({"model": {"batch_norm": True}}, "model.batch_norm", "no batch norm"),
    ({"training": {"optimizer": "sgd"}}, "training.optimizer", "AdamW"),
    ({"model": {"members": 10, "folds": 4}}, "model.members", "multiple of folds"),
    ({"training": {"lr_schedule": {"type": "cosine"}}}, "training.lr_schedule", "constant learning rates"),
    ({"training": {"early_stopping_metric": "val_accuracy"}}, "training.early_stopping_metric", "own held-out"),
    ({"training": {"learning_rate_range": [0.1, 0.01]}}, "training.learning_rate_range", "[low, high]"),
    ({"model": {"folds": 4}, "training": {"validation_fraction": 0.2}}, "training.validation_fraction",
     "own fold"),
    ({"model": {"activation": "threshold"}}, "model.activation", "zero gradient"),
    ({"model": {"linear_skip": False, "linear_members": True}}, "model.linear_members", "skip path"),
])
def test_impossible_ensemble_specs_are_422_naming_the_field(client, patch, field, fragment):
    ds = upload(client, "iris.csv").json()
    body = problem(client.post("/jobs", json={"dataset_id": ds["id"], "target": "species", **patch}), 422)
    assert body["errors"][0]["field"] == field and fragment in body["detail"], body
    assert client.get("/jobs").json()["total"] == 0


def test_an_explicit_validation_split_is_shared_by_every_member(client):
    ds = upload(client, "iris.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                     "training": {"validation_fraction": 0.25}}).json()
    assert job["spec"]["model"]["folds"] == 1 and job["spec"]["model"]["members"] == 8


def test_more_folds_than_rows_is_422_naming_folds(client):
    ds = upload(client, "xor.csv").json()
    body = problem(client.post("/jobs", json={"dataset_id": ds["id"], "target": "y",
                                              "model": {"folds": 8, "members": 8}}), 422)
    assert body["errors"][0]["field"] == "model.folds" and "8 folds for 4 rows" in body["detail"]
    assert client.get("/jobs").json()["total"] == 0
    # the default (4 folds) holds out one XOR row per fold and trains
    assert client.post("/jobs", json={"dataset_id": ds["id"], "target": "y"}).status_code == 202


def test_a_whole_number_code_column_gets_a_bin_per_level_in_the_default_ensemble(client, worker):
    """Through a real job: the school number's 30 levels each get their own bin (the model's stored
    preprocessing says so), the decimal column keeps its quantile bins, and predictions follow each level's own
    effect, which is unrelated to the numbers' order."""
    rng = np.random.default_rng(0)
    school = rng.integers(1, 31, size=1500)
    effect = rng.normal(size=31) * 3
    noise = rng.normal(size=1500)
    score = effect[school] + 0.1 * noise
    rows = "".join(f"{s},{n:.4f},{v:.4f}\n" for s, n, v in zip(school, noise, score, strict=True))
    ds = upload(client, "schools.csv", ("school,noise,score\n" + rows).encode()).json()
    job = run(client, worker, {"dataset_id": ds["id"], "target": "score", "training": {"epochs": 30}})
    assert job["status"] == "succeeded", job["error"]
    meta = json.loads(zipfile.ZipFile(io.BytesIO(client.get(f"/models/{job['model_id']}/download").content))
                      .read("model.json"))
    bins = {f["name"]: f["bins"] for f in meta["preprocessing"]["features"]}
    assert bins["school"] == [0.0, *map(float, range(1, 31))]
    assert len(bins["noise"]) == job["spec"]["model"]["bins"] + 1
    records = [{"school": s, "noise": 0.0} for s in range(1, 31)]
    predicted = np.array(client.post("/predict", json={"model_id": job["model_id"], "records": records})
                         .json()["predictions"], dtype=float)
    assert np.corrcoef(predicted, effect[1:])[0, 1] > 0.95
