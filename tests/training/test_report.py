"""The final report's figures for the plots (service/training/pipeline.py held_out_report), against scikit-learn."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch
from sklearn import metrics as skm

from service.training import metrics as M
from service.training.ensemble import EnsembleConfig, train_ensemble
from service.training.loop import TrainConfig, train
from service.training.nets import NetSpec
from service.training.pipeline import ROC_POINTS, SAMPLE_POINTS, SplitSpec, final_report, held_out_report, prepare
from tests.helpers import dataset_path


def _prepared(name: str, target: str, task: str, **split):
    table = pacsv.read_csv(dataset_path(name))
    features = [c for c in table.column_names if c != target]
    return table, prepare(table, targets=[target], features=features, kinds=dict.fromkeys(features, "numeric"),
                          task=task, split=SplitSpec(**split))


def _probabilities(net, X) -> np.ndarray:
    """The class probabilities as a user would compute them from the network's logits."""
    with torch.inference_mode():
        logits = net(torch.as_tensor(X))
    return (torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)).numpy()


def _on_the_curve(roc: dict, y_true: np.ndarray, scores: np.ndarray) -> None:
    """The report's points are points of scikit-learn's full curve, from (0, 0) to (1, 1), and its AUC is the
    whole curve's."""
    fpr, tpr, _ = skm.roc_curve(y_true, scores, drop_intermediate=False)
    full = set(zip(fpr.round(12).tolist(), tpr.round(12).tolist(), strict=True))
    points = list(zip(np.round(roc["fpr"], 12).tolist(), np.round(roc["tpr"], 12).tolist(), strict=True))
    assert set(points) <= full and points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)
    assert len(points) <= ROC_POINTS and points == sorted(points)
    assert roc["auc"] == pytest.approx(skm.roc_auc_score(y_true, scores), abs=1e-12)
    assert roc["auc"] == pytest.approx(skm.auc(fpr, tpr), abs=1e-12)


def test_a_multiclass_report_has_one_vs_rest_curves_and_per_class_figures_on_the_test_rows():
    _, prepared = _prepared("iris.csv", "species", "classification", test_fraction=0.2)
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=30))
    out = final_report(result.net, prepared)
    report = out["report"]
    assert report["split"] == "test" and report["n_rows"] == len(prepared.y_test) == 30
    assert report["predictions"] is None
    labels = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    assert [r["label"] for r in report["roc"]] == [c["label"] for c in report["classes"]] == labels
    probs, y = _probabilities(result.net, prepared.X_test), prepared.y_test
    for c, roc in enumerate(report["roc"]):
        _on_the_curve(roc, y == c, probs[:, c])
    # the headline AUROC is the mean of the curves' areas
    assert out["test"]["auroc"] == pytest.approx(np.mean([r["auc"] for r in report["roc"]]), abs=1e-9)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, probs.argmax(1), labels=[0, 1, 2],
                                                                         zero_division=0)
    assert [c["precision"] for c in report["classes"]] == pytest.approx(precision.tolist())
    assert [c["recall"] for c in report["classes"]] == pytest.approx(recall.tolist())
    assert [c["f1"] for c in report["classes"]] == pytest.approx(f1.tolist())
    assert [c["support"] for c in report["classes"]] == support.tolist()


def test_a_binary_report_has_one_curve_of_the_second_label_on_the_validation_rows():
    _, prepared = _prepared("breast_cancer.csv", "diagnosis", "classification")
    result = train(prepared.data, NetSpec(hidden_layers=(16,)), TrainConfig(epochs=10))
    report = final_report(result.net, prepared)["report"]
    assert report["split"] == "validation" and report["n_rows"] == len(prepared.data.y_val)
    labels = [str(v) for v in prepared.target["labels"]]
    (roc,) = report["roc"]
    assert roc["label"] == labels[1]
    _on_the_curve(roc, prepared.data.y_val == 1, _probabilities(result.net, prepared.data.X_val))
    assert [c["label"] for c in report["classes"]] == labels


def test_a_long_curve_is_thinned_to_its_bound_and_keeps_the_whole_curves_auc():
    rng = np.random.default_rng(0)
    scores = rng.random(20_000)
    positive = rng.random(20_000) < scores
    logits = torch.as_tensor(np.log(scores / (1 - scores)), dtype=torch.float32)[:, None]
    report = held_out_report(logits, torch.as_tensor(positive.astype(np.int64)),
                             {"task": "classification", "labels": ["no", "yes"]}, "test")
    (roc,) = report["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) <= ROC_POINTS and len(roc["fpr"]) >= ROC_POINTS * 0.9
    _on_the_curve(roc, positive, torch.sigmoid(logits[:, 0]).numpy())


def test_a_class_missing_from_the_held_out_rows_has_no_curve_and_no_auc():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 1.0, 0.0]])
    report = held_out_report(logits, torch.tensor([0, 1, 0]), {"task": "classification", "labels": ["a", "b", "c"]},
                             "validation")
    assert report["roc"][2] == {"label": "c", "fpr": [], "tpr": [], "auc": None}
    assert report["roc"][0]["auc"] == 1.0
    assert [c["support"] for c in report["classes"]] == [2, 1, 0]


def test_ties_give_the_points_of_scikit_learns_curve():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 500) / 20
    positive = rng.random(500) < scores
    fpr, tpr = M.roc_curve(torch.as_tensor(scores), torch.as_tensor(positive))
    expected_fpr, expected_tpr, _ = skm.roc_curve(positive, scores, drop_intermediate=False)
    assert np.allclose(fpr.numpy(), expected_fpr) and np.allclose(tpr.numpy(), expected_tpr)


def test_a_regression_report_pairs_actual_and_predicted_values_in_the_targets_units():
    table, prepared = _prepared("diabetes.csv", "progression", "regression", test_fraction=0.2)
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=30))
    out = final_report(result.net, prepared)
    report = out["report"]
    assert report["split"] == "test" and report["roc"] is None and report["classes"] is None
    (sample,) = report["predictions"]
    assert sample["target"] == "progression" and len(sample["actual"]) == report["n_rows"] == len(prepared.y_test) == 88
    # every test row, its target as the data set holds it
    column = table.column("progression").to_numpy()
    assert np.isclose(np.asarray(sample["actual"])[:, None], column[None, :], rtol=1e-6).any(axis=1).all()
    with torch.inference_mode():
        standardised = result.net(torch.as_tensor(prepared.X_test))[:, 0].numpy().astype(np.float64)
    expected = standardised * prepared.target["scale"][0] + prepared.target["mean"][0]
    assert sample["predicted"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert skm.r2_score(sample["actual"], sample["predicted"]) == pytest.approx(out["test"]["r2"], abs=1e-5)


def test_a_large_regression_sample_is_bounded_deterministic_and_the_same_rows_for_every_target():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "t1": 100 + 10 * x[:, 0], "t2": -5 * x[:, 1]})
    prepared = prepare(table, targets=["t1", "t2"], features=["a", "b"], kinds=dict.fromkeys("ab", "numeric"),
                       task="regression", split=SplitSpec(validation_fraction=0.5))
    result = train(prepared.data, NetSpec(hidden_layers=(8,)), TrainConfig(epochs=3))
    report = final_report(result.net, prepared)["report"]
    assert report["split"] == "validation" and report["n_rows"] == 1500
    t1, t2 = report["predictions"]
    assert [t1["target"], t2["target"]] == ["t1", "t2"]
    assert len(t1["actual"]) == len(t2["predicted"]) == SAMPLE_POINTS
    # the same rows for both targets: each row's t1 and t2 come from one input row
    a = (np.asarray(t1["actual"]) - 100) / 10
    b = np.asarray(t2["actual"]) / -5
    nearest = np.abs(np.stack([a, b], axis=1)[:, None, :] - x[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() < 1e-4
    assert final_report(result.net, prepared)["report"] == report


def test_an_ensembles_report_covers_its_out_of_fold_rows():
    _, prepared = _prepared("iris.csv", "species", "classification", validation_fraction=0.0)
    result = train_ensemble(prepared.data, EnsembleConfig(members=4, folds=4, hidden_layers=(8,), epochs=5))
    out = final_report(result.net, prepared, held_out=result.held_out)
    report = out["report"]
    assert report["split"] == out["confusion_matrix"]["split"] == "out-of-fold"
    assert report["n_rows"] == sum(c["support"] for c in report["classes"]) == 150
    outputs, targets = result.held_out
    probs = M.class_probabilities(outputs, 3).numpy()
    for c, roc in enumerate(report["roc"]):
        _on_the_curve(roc, targets.numpy() == c, probs[:, c])
    assert np.mean([r["auc"] for r in report["roc"]]) == pytest.approx(result.kept_metrics["val_auroc"], abs=1e-9)


def test_an_autoencoder_has_no_report():
    _, prepared = _prepared("iris.csv", "species", "autoencoder")
    result = train(prepared.data, NetSpec(type="autoencoder", hidden_layers=(2,)), TrainConfig(epochs=2))
    assert "report" not in final_report(result.net, prepared)
