"""service.client.plots: learning-curve figures drawn from a metrics answer, without a server."""

import pytest
from matplotlib.image import imread

from service.client.plots import job_figure, main_metric, plot_job, readable_limits


def _epochs(names: list[str], n: int = 5) -> list[dict]:
    return [{"epoch": k, "metrics": {name: 1.0 / k for name in names}} for k in range(1, n + 1)]


def test_regression_gets_loss_and_r2_panels(tmp_path):
    metrics = {"job_id": "job_x", "epochs": _epochs(["train_loss", "val_loss", "train_r2", "val_r2", "val_rmse"])}
    out = plot_job(metrics, tmp_path / "r.png", best_epoch=3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out).shape[:2] == (400, 1000)  # two panels


def test_an_autoencoder_gets_the_loss_panel_only(tmp_path):
    out = plot_job({"job_id": "job_y", "epochs": _epochs(["train_loss", "val_loss"])}, tmp_path / "a.png")
    assert imread(out).shape[:2] == (400, 500)


def test_no_epochs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="job job_z has no epoch metrics yet"):
        plot_job({"job_id": "job_z", "epochs": []}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_main_metric_names():
    assert main_metric({"val_accuracy", "val_loss"}) == "accuracy"
    assert main_metric({"train_r2", "val_rmse"}) == "r2"
    assert main_metric({"val_loss"}) is None


# ---------------------------------------------------------------- the held-out report's panels


def _classifier(labels: list[str]) -> dict:
    k = len(labels)
    roc = [{"label": label, "fpr": [0.0, 0.1, 0.5, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0], "auc": 0.85 + i / 100}
           for i, label in enumerate(labels[1:] if k == 2 else labels)]
    classes = [{"label": label, "precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 10} for label in labels]
    return {"job_id": "job_c", "task": "classification",
            "epochs": _epochs(["train_loss", "val_loss", "train_accuracy", "val_accuracy"]),
            "confusion_matrix": {"split": "test", "labels": labels, "matrix": [[5] * k for _ in labels]},
            "report": {"split": "test", "n_rows": 10 * k, "predictions": None, "roc": roc, "classes": classes}}


def _regression(targets: list[str], n: int = 50, n_rows: int = 50) -> dict:
    actual = [float(i) for i in range(n)]
    return {"job_id": "job_r", "task": "regression", "epochs": _epochs(["train_loss", "val_loss", "val_r2"]),
            "report": {"split": "validation", "n_rows": n_rows, "roc": None, "classes": None,
                       "predictions": [{"target": t, "actual": actual, "predicted": [v + 1 for v in actual]}
                                       for t in targets]}}


def _titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_a_classifier_gets_roc_curves_and_per_class_bars_beside_the_confusion_matrix(tmp_path):
    metrics = _classifier(["setosa", "versicolor", "virginica"])
    figure = job_figure(metrics)
    # loss, accuracy, confusion matrix (+ its colour bar); ROC, per-class bars
    assert len(figure.axes) == 6
    assert _titles(figure) == ["loss", "accuracy", "confusion matrix (test)", "ROC, each class vs the rest (test)",
                               "per-class precision, recall and F1 (test)"]
    roc = next(ax for ax in figure.axes if ax.get_title().startswith("ROC"))
    assert [t.get_text() for t in roc.get_legend().get_texts()] == [
        "chance", "setosa (AUC 0.850)", "versicolor (AUC 0.860)", "virginica (AUC 0.870)"]
    bars = next(ax for ax in figure.axes if ax.get_title().startswith("per-class"))
    assert len(bars.patches) == 9 and [t.get_text() for t in bars.get_xticklabels()][0] == "setosa\nn=10"
    out = plot_job(metrics, tmp_path / "c.png")
    assert out.stat().st_size > 10_000 and imread(out).shape[:2] == (800, 1500)  # two rows of three panels


def test_a_binary_classifier_has_one_curve_and_many_classes_share_one_legend_entry():
    binary = job_figure(_classifier(["no", "yes"]))
    roc = next(ax for ax in binary.axes if ax.get_title().startswith("ROC"))
    assert roc.get_title() == "ROC (test)"
    assert [t.get_text() for t in roc.get_legend().get_texts()] == ["chance", "yes (AUC 0.850)"]
    many = job_figure(_classifier([f"c{i}" for i in range(12)]))
    roc = next(ax for ax in many.axes if ax.get_title().startswith("ROC"))
    assert len(roc.get_lines()) == 1 + 12 + 1
    assert [t.get_text() for t in roc.get_legend().get_texts()][1].startswith("12 classes vs rest (mean AUC 0.9")


def test_a_regression_gets_predicted_vs_actual_and_residuals(tmp_path):
    metrics = _regression(["progression"], n=50, n_rows=400)
    figure = job_figure(metrics)
    assert _titles(figure) == ["loss", "R²", "progression: predicted vs actual (validation, 50 of 400 rows)",
                               "progression: residuals (validation, 50 of 400 rows)"]
    scatter, residuals = figure.axes[2], figure.axes[3]
    (diagonal,) = scatter.get_lines()
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0.0, 50.0]  # y = x over both ranges
    assert residuals.collections[0].get_offsets()[:, 1].tolist() == [-1.0] * 50
    out = plot_job(metrics, tmp_path / "r.png")
    assert imread(out).shape[:2] == (800, 1000)


def test_several_targets_get_a_row_each_up_to_the_bound():
    figure = job_figure(_regression([f"t{i}" for i in range(6)]))
    assert len(figure.axes) == 2 + 2 * 4
    assert figure.get_suptitle() == "job job_r (the first 4 of 6 targets)"
    assert job_figure(_regression(["a", "b"])).get_suptitle() == "job job_r"


def test_a_wild_first_epoch_does_not_stretch_the_axis():
    epochs = [{"epoch": k, "metrics": {"train_r2": v, "val_r2": v - 0.05, "val_loss": 1.0 / k}}
              for k, v in enumerate([-1.77, 0.30, 0.35, 0.38, 0.40, 0.41, 0.42, 0.42, 0.43, 0.43], start=1)]
    figure = job_figure({"job_id": "job_w", "epochs": epochs})
    loss, r2 = figure.axes
    low, high = r2.get_ylim()
    assert 0.2 < low < 0.25 and 0.43 < high < 0.45  # epoch 2 stays on the axis, epoch 1 does not
    assert r2.get_xlabel() == "epoch (epoch 1 off the scale)"
    assert loss.get_ylim()[1] >= 1.0 and loss.get_xlabel() == "epoch"  # an ordinary first drop stays on the axis


def test_readable_limits_leave_short_or_tame_curves_alone():
    assert readable_limits([([1, 2, 3, 4], [-5.0, 0.1, 0.2, 0.3])]) is None  # too few epochs to judge
    assert readable_limits([([1, 2, 3, 4, 5, 6], [0.9, 0.6, 0.5, 0.45, 0.42, 0.4])]) is None
    low, high, left_out = readable_limits([([1, 2, 3, 4, 5, 6], [-9.0, 0.6, 0.5, 0.45, 0.42, 0.4])])
    assert left_out == [1] and low == pytest.approx(0.39) and high == pytest.approx(0.61)
    # a loss that starts huge: the first three epochs of twenty are judged, and only the wild ones left out
    losses = [50.0, 9.0, 0.7] + [0.5 - 0.01 * k for k in range(17)]
    assert readable_limits([(list(range(1, 21)), losses)])[2] == [1, 2]
