import math

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch

from service.training import loop
from service.training import metrics as M
from service.training.artifact import WEIGHTS, ModelMeta, load_model, save_model
from service.training.loop import TrainConfig, TrainData, TrainingError, make_optimizer, train
from service.training.nets import NetSpec
from service.training.pipeline import SplitSpec, predict_inputs, prepare
from tests.helpers import dataset_path

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0])


def xor_data() -> TrainData:
    return TrainData(task="classification", X_train=XOR_X, y_train=XOR_Y, X_val=XOR_X[:0], y_val=XOR_Y[:0],
                     n_classes=2)


def test_one_hidden_layer_solves_xor():
    config = TrainConfig(epochs=300, batch_size=4, learning_rate=0.05, seed=0)
    result = train(xor_data(), NetSpec(hidden_layers=(8,), activation="tanh"), config)
    assert result.history[-1]["train_accuracy"] == 1.0


def test_logistic_regression_cannot_fit_xor():
    config = TrainConfig(epochs=300, batch_size=4, learning_rate=0.05, seed=0)
    result = train(xor_data(), NetSpec(type="logistic_regression"), config)
    assert max(row["train_accuracy"] for row in result.history) <= 0.75


def iris_prepared(seed=0):
    table = pacsv.read_csv(dataset_path("iris.csv"))
    features = [c for c in table.column_names if c != "species"]
    return prepare(table, targets=["species"], features=features, kinds={f: "numeric" for f in features},
                   task="classification", split=SplitSpec(validation_fraction=0.2, seed=seed))


def test_same_seed_gives_identical_metrics():
    prepared = iris_prepared()
    config = TrainConfig(epochs=15, seed=7, early_stopping_patience=0)
    a = train(prepared.data, NetSpec(dropout=0.1), config).history
    b = train(prepared.data, NetSpec(dropout=0.1), config).history
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b]
    c = train(prepared.data, NetSpec(dropout=0.1), TrainConfig(epochs=15, seed=8, early_stopping_patience=0)).history
    assert c[-1]["train_loss"] != a[-1]["train_loss"]


def test_early_stopping_keeps_the_best_epoch():
    prepared = iris_prepared()
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=400, learning_rate=0.01, early_stopping_patience=5))
    assert result.stopped_at == result.best_epoch + 5 == len(result.history) < 400  # patience 5 after the best
    best = min(range(len(result.history)), key=lambda i: result.history[i]["val_loss"])
    assert result.best_epoch == best + 1
    # the kept weights are the best epoch's: re-evaluating gives its validation loss
    X = torch.as_tensor(prepared.data.X_val)
    y = torch.as_tensor(prepared.data.y_val)
    with torch.inference_mode():
        loss = torch.nn.functional.cross_entropy(result.net(X), y).item()
    assert loss == pytest.approx(result.history[best]["val_loss"], rel=1e-5)


def test_early_stopping_on_a_metric_that_is_never_defined_stops_after_patience():
    # AUROC of a validation split holding one class is undefined in every epoch: patience counts from the start
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    data = TrainData(task="classification", X_train=X, y_train=y, X_val=X[y == 1][:8], y_val=y[y == 1][:8],
                     n_classes=2)
    result = train(data, NetSpec(hidden_layers=(4,)),
                   TrainConfig(epochs=50, early_stopping_patience=3, early_stopping_metric="val_auroc"))
    assert all(row["val_auroc"] is None for row in result.history)
    assert result.best_epoch is None and result.stopped_at == 3 == len(result.history)


def test_diverging_learning_rate_raises_nan_error():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32) * 1e4
    data = TrainData(task="regression", X_train=X, y_train=(X @ np.ones(3)).astype(np.float32), X_val=X[:0],
                     y_val=np.zeros(0, np.float32))
    with pytest.raises(TrainingError, match="loss became NaN at epoch"):
        train(data, NetSpec(), TrainConfig(epochs=50, optimizer="sgd", learning_rate=10.0))


def test_training_mode_is_restored_after_each_evaluation():
    seen = []
    prepared = iris_prepared()
    result = train(prepared.data, NetSpec(dropout=0.5), TrainConfig(epochs=3, early_stopping_patience=0),
                   on_epoch=lambda report: seen.append(report.epoch))
    assert seen == [1, 2, 3]
    assert not result.net.training  # handed back in eval mode for inference


def test_model_round_trips_through_safetensors_and_json(tmp_path):
    prepared = iris_prepared()
    result = train(prepared.data, NetSpec(hidden_layers=(16,), batch_norm=True, dropout=0.2), TrainConfig(epochs=5))
    meta = ModelMeta(spec={"model": {"type": "mlp", "hidden_layers": [16], "activation": "relu", "dropout": 0.2,
                                     "batch_norm": True}},
                     task="classification", n_inputs=4, n_outputs=3, preprocessing=prepared.preprocessing,
                     target=prepared.target)
    save_model(tmp_path / "m", result.net, meta)
    assert (tmp_path / "m" / WEIGHTS).read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle stream
    net, loaded = load_model(tmp_path / "m")
    X = prepared.data.X_val
    a = predict_inputs(result.net, meta, X)
    b = predict_inputs(net, loaded, X)
    assert a == b
    assert set(a["predictions"]) <= {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-6) for p in a["probabilities"])


def test_logistic_gradient_matches_closed_form():
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float32)
    w = torch.randn(3, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    z = x @ w + b
    torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum").backward()
    a = torch.sigmoid(z.detach())
    assert torch.allclose(w.grad, ((a - y)[:, None] * x).sum(0), atol=1e-5)
    assert torch.allclose(b.grad, (a - y).sum(), atol=1e-5)


def test_resuming_from_a_checkpoint_continues_bit_for_bit(tmp_path):
    from service.training.artifact import load_checkpoint, save_checkpoint
    from service.training.loop import TrainState

    prepared = iris_prepared()
    spec = NetSpec(dropout=0.3)
    config = TrainConfig(epochs=12, optimizer="adamw", weight_decay=0.01, early_stopping_patience=4,
                         lr_schedule={"type": "plateau", "factor": 0.5, "patience": 1})
    whole = train(prepared.data, spec, config)
    saved = {}

    def keep(report):
        if report.epoch == 5:
            save_checkpoint(tmp_path, "ck", report.snapshot(), {"history": report.history})
            saved["epoch"] = report.epoch
            return "cancelled"
        return None

    stopped = train(prepared.data, spec, config, on_epoch=keep)
    assert stopped.cancelled and len(stopped.history) == 5
    fields, extra = load_checkpoint(tmp_path, "ck")
    resumed = train(prepared.data, spec, config, resume=TrainState(**fields), history=extra["history"])

    def strip(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert saved["epoch"] == 5 and len(extra["history"]) == 5
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    for a, b in zip(resumed.net.state_dict().values(), whole.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_logistic_regression_by_lbfgs_reaches_scikit_learns_optimum():
    from sklearn.linear_model import LogisticRegression

    from service.server.spec import LOGISTIC_TRAINING

    table = pacsv.read_csv(dataset_path("breast_cancer.csv"))
    features = [c for c in table.column_names if c != "diagnosis"]
    prepared = prepare(table, targets=["diagnosis"], features=features, kinds={f: "numeric" for f in features},
                       task="classification", split=SplitSpec(validation_fraction=0.2, seed=0))
    data = prepared.data
    config = TrainConfig(optimizer=LOGISTIC_TRAINING["optimizer"], learning_rate=LOGISTIC_TRAINING["learning_rate"],
                         epochs=30, early_stopping_patience=0, weight_decay=1 / len(data.X_train))
    result = train(data, NetSpec(type="logistic_regression"), config)
    reference = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(data.X_train, data.y_train)
    layer = result.net[0]
    assert np.allclose(layer.weight.detach().numpy()[0], reference.coef_[0], atol=2e-3)
    assert abs(float(layer.bias.detach()[0]) - reference.intercept_[0]) < 2e-3


def test_a_model_folder_written_before_ensembles_still_loads_and_predicts_the_same(tmp_path):
    import json

    prepared = iris_prepared()
    result = train(prepared.data, NetSpec(hidden_layers=(8,)), TrainConfig(epochs=3))
    meta = ModelMeta(spec={"model": {"type": "mlp", "hidden_layers": [8], "activation": "relu", "dropout": 0.1,
                                     "batch_norm": False}},
                     task="classification", n_inputs=4, n_outputs=3, preprocessing=prepared.preprocessing,
                     target=prepared.target)
    save_model(tmp_path / "m", result.net, meta)
    # as format 1 wrote it: no ensemble field, format_version 1
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    del doc["ensemble"]
    doc["format_version"] = 1
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    net, loaded = load_model(tmp_path / "m")
    assert loaded.model_type == "mlp" and loaded.format_version == 2
    X = prepared.data.X_val
    assert predict_inputs(net, loaded, X) == predict_inputs(result.net, meta, X)


CHEAP_TRAIN_FIGURES = {"train_loss", "train_accuracy"}


def test_train_figures_are_cheap_each_epoch_and_complete_at_the_end():
    prepared = iris_prepared()
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=6, early_stopping_patience=0))
    val = {f"val_{name}" for name in M.METRICS["classification"]}
    full = {f"train_{name}" for name in M.METRICS["classification"]}
    for row in result.history[:-1]:
        assert {k for k in row if k.startswith("train_")} == CHEAP_TRAIN_FIGURES and val <= set(row)
    last = result.history[-1]
    assert full <= set(last) and val <= set(last)
    assert 0.5 < last["train_auroc"] <= 1.0 and 0 < last["train_f1_macro"] <= 1.0


def test_the_epoch_early_stopping_ends_on_has_every_train_figure():
    prepared = iris_prepared()
    result = train(prepared.data, NetSpec(), TrainConfig(epochs=400, learning_rate=0.01, early_stopping_patience=3))
    assert result.stopped_at == len(result.history) < 400
    assert "train_auroc" in result.history[-1] and "train_auroc" not in result.history[-2]


def test_regression_keeps_every_train_figure_each_epoch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5], dtype=np.float32)).astype(np.float32)
    data = TrainData(task="regression", X_train=X, y_train=y, X_val=X[:16], y_val=y[:16])
    result = train(data, NetSpec(hidden_layers=(8,)), TrainConfig(epochs=3, early_stopping_patience=0))
    for row in result.history:
        assert {f"train_{name}" for name in M.METRICS["regression"]} <= set(row)


def test_sgd_steps_with_the_fused_kernel():
    net = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(TrainConfig(optimizer="sgd"), net.parameters(), torch.device("cpu"))
    assert optimizer.defaults["fused"] is True


def test_training_flushes_denormals_and_restores_them_after():
    tiny = torch.tensor([1e-30])
    seen = []

    def probe(report):
        seen.append((tiny * 1e-10).item())  # 1e-40 is a denormal float32
        return None

    train(xor_data(), NetSpec(hidden_layers=(4,)), TrainConfig(epochs=2, batch_size=4), on_epoch=probe)
    assert seen == [0.0, 0.0]
    assert (tiny * 1e-10).item() > 0


def test_a_long_epoch_reports_its_steps(monkeypatch):
    monkeypatch.setattr(loop, "STEP_REPORT_S", 0.0)  # every step of every epoch, here
    prepared = iris_prepared()
    reports = []
    config = TrainConfig(epochs=2, batch_size=32, early_stopping_patience=0)
    result = train(prepared.data, NetSpec(), config, on_step=reports.append)
    steps = math.ceil(len(prepared.data.X_train) / 32)
    assert [(r.epoch, r.step) for r in reports] == [(e, s) for e in (1, 2) for s in range(1, steps + 1)]
    assert all(r.steps == steps and r.samples_per_second > 0 for r in reports)
    assert [r.eta_s for r in reports if r.step == steps] == [0.0, 0.0]
    assert all(r.eta_s >= 0 for r in reports)  # how fast it falls depends on the machine's load: not asserted
    # reporting changes nothing in training
    quiet = train(prepared.data, NetSpec(), config)
    for a, b in zip(result.net.state_dict().values(), quiet.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_short_epoch_reports_no_steps():
    reports = []
    train(iris_prepared().data, NetSpec(), TrainConfig(epochs=2), on_step=reports.append)
    assert reports == []
