"""Learning-curve and confusion-matrix figures for a job, drawn with matplotlib's Agg renderer (no display)."""

from pathlib import Path
from typing import Any

import matplotlib

from service.client.http import EpochMetrics, JobMetrics

matplotlib.use("Agg")

from matplotlib.axes import Axes  # noqa: E402 (the backend is chosen first)
from matplotlib.figure import Figure  # noqa: E402

PANEL_INCHES = (5.0, 4.0)
DPI = 100
TRAIN_COLOUR, VALIDATION_COLOUR = "tab:blue", "tab:orange"


def main_metric(metric_names: set[str] | dict[str, Any]) -> str | None:
    """The headline metric of a job's epochs: accuracy for classifiers, R² for regression, else None."""
    for name in ("accuracy", "r2"):
        if f"val_{name}" in metric_names or f"train_{name}" in metric_names:
            return name
    return None


def _series(epochs: list[EpochMetrics], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in epochs:
        value = row["metrics"].get(key)
        if isinstance(value, (int, float)):
            xs.append(row["epoch"])
            ys.append(float(value))
    return xs, ys


def _curves(ax: Axes, epochs: list[EpochMetrics], name: str, label: str, best_epoch: int | None) -> None:
    for split, colour in (("train", TRAIN_COLOUR), ("val", VALIDATION_COLOUR)):
        xs, ys = _series(epochs, f"{split}_{name}")
        if xs:
            ax.plot(xs, ys, color=colour, marker="." if len(xs) <= 30 else None,
                    label="train" if split == "train" else "validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_title(label)
    ax.grid(True, alpha=0.3)
    ax.legend()


def _confusion(ax: Axes, confusion: dict[str, Any]) -> None:
    labels = [str(label) for label in confusion["labels"]]
    matrix = confusion["matrix"]
    image = ax.imshow(matrix, cmap="Blues")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if max(map(len, labels)) > 4 else 0, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    split = confusion.get("split")
    ax.set_title(f"confusion matrix ({split})" if split else "confusion matrix")
    peak = max((max(row) for row in matrix if row), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if peak and count > peak / 2 else "black")


def plot_job(metrics: JobMetrics, output: str | Path, *, title: str | None = None,
             best_epoch: int | None = None) -> Path:
    """Write a PNG: loss curves, the main metric per epoch and, for classifiers, the confusion matrix."""
    epochs = metrics.get("epochs") or []
    if not epochs:
        raise ValueError(f"job {metrics.get('job_id')} has no epoch metrics yet; nothing to plot")
    names = {key for row in epochs for key in row["metrics"]}
    metric = main_metric(names)
    confusion = metrics.get("confusion_matrix")
    if not (confusion and confusion.get("labels") and confusion.get("matrix")):
        confusion = None
    n_panels = 1 + (metric is not None) + (confusion is not None)
    figure = Figure(figsize=(PANEL_INCHES[0] * n_panels, PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    _curves(axes[0], epochs, "loss", "loss", best_epoch)
    if metric is not None:
        _curves(axes[1], epochs, metric, {"accuracy": "accuracy", "r2": "R²"}[metric], best_epoch)
    if confusion is not None:
        _confusion(axes[-1], confusion)
    figure.suptitle(title or f"job {metrics.get('job_id', '')}".strip())
    output = Path(output)
    figure.savefig(output, format="png")
    return output
