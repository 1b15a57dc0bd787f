"""The lecture's model family and training options, checked against closed forms and scikit-learn."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from service.training import metrics as M
from service.training.artifact import ModelMeta
from service.training.loop import TrainConfig, TrainData, train
from service.training.nets import NetSpec
from service.training.perceptron import train_perceptron
from service.training.pipeline import SplitSpec, final_report, predict_inputs, prepare, prepare_arrays
from tests.helpers import dataset_path

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0])


def binary(X, y) -> TrainData:
    return TrainData(task="classification", X_train=X.astype(np.float32), y_train=y, X_val=X[:0].astype(np.float32),
                     y_val=y[:0], n_classes=2)


# ---------------------------------------------------------------- perceptron


def test_perceptron_follows_the_lecture_update_rule():
    X = np.array([[1.0, 2.0], [-1.0, -1.0]], dtype=np.float32)
    result = train_perceptron(binary(X, np.array([1, 0])), TrainConfig(epochs=1))
    # w starts at 0: x1 gives z = 0 → ŷ = 0, err = 1, w = (1, 2, b = 1); x2 gives z = -2 → ŷ = 0 = y.
    assert result.net[0].weight.tolist() == [[1.0, 2.0]] and result.net[0].bias.item() == 1.0


def test_perceptron_reaches_full_accuracy_on_separable_data():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-2, 0.5, (50, 2)), rng.normal(2, 0.5, (50, 2))])
    y = np.array([0] * 50 + [1] * 50)
    result = train_perceptron(binary(X, y), TrainConfig(epochs=100))
    assert result.history[-1]["train_accuracy"] == 1.0
    assert result.info["converged"] and "converged at epoch" in result.info["note"]


@pytest.mark.parametrize("epochs", [1, 10, 1000])
def test_perceptron_cannot_fit_xor(epochs):
    result = train_perceptron(binary(XOR_X, XOR_Y), TrainConfig(epochs=epochs))
    assert max(r["train_accuracy"] for r in result.history) <= 0.75
    assert not result.info["converged"] and "not linearly separable" in result.info["note"]


def test_mlp_with_one_hidden_layer_solves_xor():
    result = train(binary(XOR_X, XOR_Y), NetSpec(hidden_layers=(4,), activation="tanh"),
                   TrainConfig(epochs=500, batch_size=4, learning_rate=0.05, seed=0))
    assert result.history[-1]["train_accuracy"] == 1.0


# ---------------------------------------------------------------- autoencoder


def test_linear_autoencoder_approaches_pca():
    table = pacsv.read_csv(dataset_path("breast_cancer.csv"))
    features = [c for c in table.column_names if c != "diagnosis"]
    prepared = prepare(table, targets=[], features=features, kinds={f: "numeric" for f in features},
                       task="autoencoder", split=SplitSpec(validation_fraction=0.0))
    X = prepared.data.X_train.astype(np.float64)
    k = 3
    _, _, vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    pca = X.mean(0) + (X - X.mean(0)) @ vt[:k].T @ vt[:k]
    pca_mse = ((X - pca) ** 2).mean()
    result = train(prepared.data, NetSpec(type="autoencoder", hidden_layers=(k,), activation="linear"),
                   TrainConfig(epochs=300, batch_size=64, learning_rate=0.01, early_stopping_patience=0))
    ae_mse = result.history[-1]["train_loss"]
    assert pca_mse * 0.999 <= ae_mse <= pca_mse * 1.05, (ae_mse, pca_mse)


# ---------------------------------------------------------------- metrics


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    for n_classes in (2, 4):
        y = rng.integers(0, n_classes, 300)
        logits = rng.normal(size=(300, 1 if n_classes == 2 else n_classes)) + (
            y[:, None] if n_classes == 2 else np.eye(n_classes)[y])
        got = {k: v.item() for k, v in M.classification_metrics(torch.tensor(logits, dtype=torch.float32),
                                                                  torch.tensor(y), n_classes).items()}
        probs = M.class_probabilities(torch.tensor(logits, dtype=torch.float32), n_classes).numpy()
        pred = probs.argmax(1)
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
        assert got["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
        assert got["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
        assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
        auroc = skm.roc_auc_score(y, probs[:, 1]) if n_classes == 2 else skm.roc_auc_score(
            y, probs, multi_class="ovr", average="macro")
        assert got["auroc"] == pytest.approx(auroc, abs=1e-6)
        assert got["log_loss"] == pytest.approx(skm.log_loss(y, probs), rel=1e-4)
        cm = M.confusion_matrix(torch.tensor(y), torch.tensor(pred), n_classes).numpy()
        assert (cm == skm.confusion_matrix(y, pred)).all()


def test_auroc_handles_ties_like_scikit_learn():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.4, 0.8, 0.8], dtype=torch.float64)
    y = np.array([0, 0, 1, 1, 0, 1])
    got = M.binary_auroc(scores, torch.tensor(y == 1)).item()
    assert got == pytest.approx(skm.roc_auc_score(y, scores.numpy()))


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(100, 1))
    pred = y + rng.normal(scale=0.5, size=(100, 1))
    scale = 12.5
    got = {k: v.item() for k, v in M.regression_metrics(torch.tensor(pred), torch.tensor(y),
                                                         torch.tensor([scale], dtype=torch.float64)).items()}
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y * scale, pred * scale))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y * scale, pred * scale)))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y * scale, pred * scale))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))


# ---------------------------------------------------------------- training options


def iris(**split):
    table = pacsv.read_csv(dataset_path("iris.csv"))
    features = [c for c in table.column_names if c != "species"]
    return prepare(table, targets=["species"], features=features, kinds={f: "numeric" for f in features},
                   task="classification", split=SplitSpec(**split))


def _halved_on_plateaus(history: list[dict]) -> list[float]:
    """ReduceLROnPlateau's rule (patience 0, relative threshold 1e-4), replayed on the recorded validation losses:
    each epoch that does not improve on the best loss halves the next epoch's rate."""
    lrs, lr, best = [], 0.1, math.inf
    for row in history:
        lrs.append(lr)
        if row["val_loss"] < best * (1 - 1e-4):
            best = row["val_loss"]
        else:
            lr /= 2
    return lrs


@pytest.mark.parametrize(("schedule", "expected"), [
    ({"type": "step", "step_size": 2, "gamma": 0.5}, lambda history: [0.1 * 0.5 ** (t // 2) for t in range(10)]),
    ({"type": "cosine", "min_lr": 0.0},
     lambda history: [0.05 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]),
    ({"type": "plateau", "factor": 0.5, "patience": 0}, _halved_on_plateaus),
])
def test_learning_rate_schedules(schedule, expected):
    result = train(iris().data, NetSpec(), TrainConfig(epochs=10, optimizer="sgd", learning_rate=0.1,
                                                       lr_schedule=schedule, early_stopping_patience=0))
    lrs = [row["lr"] for row in result.history]
    assert lrs == pytest.approx(expected(result.history), rel=1e-9) and min(lrs) < 0.1


def test_gradient_clipping_bounds_each_step():
    data = iris().data
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=len(data.X_train), optimizer="sgd", momentum=0.0,
                         learning_rate=1.0, gradient_clip_norm=1e-3, early_stopping_patience=0)
    from service.training.nets import build_network
    torch.manual_seed(config.seed)
    before = torch.cat([p.flatten() for p in build_network(NetSpec(), 4, 3).parameters()])
    after = torch.cat([p.detach().flatten() for p in train(data, NetSpec(), config).net.parameters()])
    assert (after - before).norm().item() <= 1e-3 + 1e-6


def test_balanced_class_weights():
    from service.training.features import class_weights

    y = np.array([0] * 90 + [1] * 10)
    assert class_weights(y, ["a", "b"], "balanced") == pytest.approx([100 / 180, 100 / 20])
    assert class_weights(y, ["a", "b"], {"b": 3.0}) == [1.0, 3.0]
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=w)
    assert M.classification_loss(logits, target, 3, w).item() == pytest.approx(expected.item())


def test_test_split_is_held_out_and_reported_once():
    prepared = iris(validation_fraction=0.2, test_fraction=0.2)
    assert prepared.info["n_test"] == 30 and prepared.info["n_validation"] == 30 and prepared.info["n_train"] == 90
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=30))
    report = final_report(result.net, prepared)
    assert set(report["test"]) >= {"accuracy", "balanced_accuracy", "f1_macro", "auroc", "log_loss", "loss"}
    with torch.inference_mode():
        predicted = result.net(torch.as_tensor(prepared.X_test)).argmax(1).numpy()
    assert report["test"]["accuracy"] == pytest.approx(skm.accuracy_score(prepared.y_test, predicted))
    assert report["confusion_matrix"]["split"] == "test"
    assert report["confusion_matrix"]["matrix"] == skm.confusion_matrix(prepared.y_test, predicted,
                                                                        labels=[0, 1, 2]).tolist()
    assert "test_accuracy" not in result.history[-1]


def test_multi_target_regression_predicts_each_target_in_its_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "t1": 100 + 10 * x[:, 0], "t2": -5 * x[:, 1]})
    prepared = prepare(table, targets=["t1", "t2"], features=["a", "b", "c"], kinds=dict.fromkeys("abc", "numeric"),
                       task="regression", split=SplitSpec())
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=60))
    kept = result.history[(result.best_epoch or len(result.history)) - 1]
    assert kept["val_r2"] > 0.9
    meta = ModelMeta(spec={"model": {"type": "mlp"}}, task="regression", target=prepared.target,
                     preprocessing=prepared.preprocessing, n_inputs=3, n_outputs=2)
    X = prepared.data.X_val
    out = predict_inputs(result.net, meta, X)
    assert set(out["predictions"][0]) == {"t1", "t2"}
    # the validation rows' own targets, from their inputs in the table's units
    a, b = (X[:, j] * f["scale"] + f["mean"] for j, f in enumerate(prepared.preprocessing["features"][:2]))
    truth = np.column_stack([100 + 10 * a, -5 * b])
    predicted = np.array([[p["t1"], p["t2"]] for p in out["predictions"]])
    per_target = skm.r2_score(truth, predicted, multioutput="raw_values")
    assert (per_target > 0.9).all() and per_target.mean() == pytest.approx(kept["val_r2"], abs=1e-4)


def test_image_arrays_are_flattened_like_view():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 2
    prepared = prepare_arrays({"X": X, "y": y}, task="classification", split=SplitSpec(validation_fraction=0.0))
    flat = torch.as_tensor(X).float().view(-1, 8 * 8) / 255  # the lecture's features.view(-1, 28*28)
    assert np.allclose(prepared.data.X_train, flat.numpy()[np.sort(np.arange(40))])
    assert prepared.data.X_train.max() <= 1.0 and prepared.preprocessing["shape"] == [1, 8, 8]


# ---------------------------------------------------------------- quality bar (80/20 split, fixed seed)


def _sklearn_split(prepared):
    """scikit-learn sees the same test rows; it trains on our train + validation rows."""
    d = prepared.data
    X = np.vstack([d.X_train, d.X_val])
    y = np.concatenate([d.y_train, d.y_val])
    scaler = StandardScaler().fit(X)
    return scaler.transform(X), y, scaler.transform(prepared.X_test), prepared.y_test


@pytest.mark.parametrize(("name", "target"), [("iris.csv", "species"), ("breast_cancer.csv", "diagnosis")])
def test_default_spec_is_as_good_as_scikit_learn(name, target):
    table = pacsv.read_csv(dataset_path(name))
    features = [c for c in table.column_names if c != target]
    prepared = prepare(table, targets=[target], features=features, kinds={f: "numeric" for f in features},
                       task="classification", split=SplitSpec(validation_fraction=0.2, test_fraction=0.2, seed=0))
    result = train(prepared.data, NetSpec(), TrainConfig())
    ours = final_report(result.net, prepared)["test"]["accuracy"]
    X, y, Xt, yt = _sklearn_split(prepared)
    mlp = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=2000, random_state=0).fit(X, y).score(Xt, yt)
    logistic = LogisticRegression(max_iter=5000).fit(X, y).score(Xt, yt)
    assert ours >= max(mlp, logistic) - 0.02, (ours, mlp, logistic)


def test_default_spec_on_diabetes_reaches_r2_040():
    table = pacsv.read_csv(dataset_path("diabetes.csv"))
    features = [c for c in table.column_names if c != "progression"]
    prepared = prepare(table, targets=["progression"], features=features, kinds={f: "numeric" for f in features},
                       task="regression", split=SplitSpec(validation_fraction=0.2, test_fraction=0.2, seed=0))
    result = train(prepared.data, NetSpec(), TrainConfig())
    assert final_report(result.net, prepared)["test"]["r2"] >= 0.40
