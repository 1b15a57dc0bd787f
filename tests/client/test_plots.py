"""service.client.plots: learning-curve figures drawn from a metrics answer, without a server."""

import pytest
from matplotlib.image import imread

from service.client.plots import main_metric, plot_job


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
