"""A job's figures, drawn with matplotlib's Agg renderer (no display): learning curves and, from the held-out report,
the confusion matrix, ROC curves and per-class figures of a classifier, or a regression's predicted-vs-actual and
residual plots."""

import math
from pathlib import Path
from typing import Any

import matplotlib

from service.client.http import EpochMetrics, JobMetrics, JobReport, RocCurve, TargetPredictions

matplotlib.use("Agg")

from matplotlib.axes import Axes  # noqa: E402 (the backend is chosen first)
from matplotlib.figure import Figure  # noqa: E402

PANEL_INCHES = (5.0, 4.0)
DPI = 100
TRAIN_COLOUR, VALIDATION_COLOUR = "tab:blue", "tab:orange"
# Early epochs left out of a learning curve's y-axis when they lie more than this many times the later epochs' range
# beyond it, so that the later epochs keep at least a quarter of the axis (an R² of -1.77 in epoch 1 would otherwise
# flatten everything after it); an ordinary first drop, such as a loss falling as 1/epoch, stays on the axis.
WILD_SPAN = 3.0
MAX_EARLY_EPOCHS = 3
MAX_TARGET_ROWS = 4  # regression targets drawn, one row each; the report has every one
MAX_ROC_LEGEND = 10  # more one-vs-rest curves than this share one legend entry


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
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row["epoch"])
            ys.append(float(value))
    return xs, ys


def readable_limits(series: list[tuple[list[int], list[float]]]) -> tuple[float, float, list[int]] | None:
    """(low, high, epochs left out) for a learning curve's y-axis when some of its first few epochs lie far outside
    the range of the epochs after them; None when every epoch fits well enough on one axis."""
    n = max((len(xs) for xs, _ in series), default=0)
    skip = min(MAX_EARLY_EPOCHS, n // 5)
    if not skip:
        return None
    first_later = min(xs[skip] for xs, _ in series if len(xs) > skip)
    later = [y for xs, ys in series for x, y in zip(xs, ys, strict=True) if x >= first_later]
    span = max(later) - min(later) or abs(max(later)) or 1.0
    bottom, top = min(later) - WILD_SPAN * span, max(later) + WILD_SPAN * span
    points = [(x, y) for xs, ys in series for x, y in zip(xs, ys, strict=True)]
    left_out = sorted({x for x, y in points if not bottom <= y <= top})
    if not left_out:
        return None
    kept = [y for _, y in points if bottom <= y <= top]
    low, high = min(kept), max(kept)
    margin = 0.05 * (high - low or span)
    return low - margin, high + margin, left_out


def _curves(ax: Axes, epochs: list[EpochMetrics], name: str, label: str, best_epoch: int | None) -> None:
    drawn = []
    for split, colour in (("train", TRAIN_COLOUR), ("val", VALIDATION_COLOUR)):
        xs, ys = _series(epochs, f"{split}_{name}")
        if xs:
            drawn.append((xs, ys))
            ax.plot(xs, ys, color=colour, marker="." if len(xs) <= 30 else None,
                    label="train" if split == "train" else "validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
    limits = readable_limits(drawn)
    if limits is not None:
        low, high, left_out = limits
        ax.set_ylim(low, high)
        ax.set_xlabel(f"epoch ({'epochs' if len(left_out) > 1 else 'epoch'} {', '.join(map(str, left_out))} off "
                      "the scale)")
    else:
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


def _roc(ax: Axes, curves: list[RocCurve], split: str) -> None:
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    shared = len(curves) > MAX_ROC_LEGEND
    for curve in curves:
        if not curve["fpr"]:
            continue
        auc = "n/a" if curve["auc"] is None else f"{curve['auc']:.3f}"
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1 if shared else 1.5, alpha=0.6 if shared else 1.0,
                label=None if shared else f"{curve['label']} (AUC {auc})")
    if shared:
        aucs = [c["auc"] for c in curves if c["auc"] is not None]
        mean = f"{sum(aucs) / len(aucs):.3f}" if aucs else "n/a"
        ax.plot([], [], color="tab:blue", label=f"{len(curves)} classes vs rest (mean AUC {mean})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"ROC ({split})" if len(curves) == 1 else f"ROC, each class vs the rest ({split})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def _per_class(ax: Axes, report: JobReport) -> None:
    classes = report["classes"] or []
    bars = {"precision": [c["precision"] for c in classes], "recall": [c["recall"] for c in classes],
            "F1": [c["f1"] for c in classes]}
    width = 0.8 / len(bars)
    for k, ((name, values), colour) in enumerate(zip(bars.items(), ("tab:blue", "tab:orange", "tab:green"),
                                                     strict=True)):
        ax.bar([i + (k - 1) * width for i in range(len(classes))], values, width=width, color=colour, label=name)
    labels = [f"{c['label']}\nn={c['support']}" for c in classes]
    ax.set_xticks(range(len(classes)), labels, rotation=45 if len(classes) > 8 else 0,
                  ha="right" if len(classes) > 8 else "center")
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.set_title(f"per-class precision, recall and F1 ({report['split']})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", ncols=3, fontsize="small")


def _shown(sample: TargetPredictions, report: JobReport) -> str:
    shown = len(sample["actual"])
    return f"{report['split']}, {shown:,} of {report['n_rows']:,} rows" if shown < report["n_rows"] else \
        f"{report['split']}, {shown:,} rows"


def _predicted_vs_actual(ax: Axes, sample: TargetPredictions, report: JobReport) -> None:
    actual, predicted = sample["actual"], sample["predicted"]
    alpha = 0.7 if len(actual) <= 200 else 0.35
    ax.scatter(actual, predicted, s=10, alpha=alpha, color=TRAIN_COLOUR, edgecolors="none")
    if actual:
        low, high = min(*actual, *predicted), max(*actual, *predicted)
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.legend(loc="upper left", fontsize="small")
    ax.set_xlabel(f"actual {sample['target']}")
    ax.set_ylabel(f"predicted {sample['target']}")
    ax.set_title(f"{sample['target']}: predicted vs actual ({_shown(sample, report)})")
    ax.grid(True, alpha=0.3)


def _residuals(ax: Axes, sample: TargetPredictions, report: JobReport) -> None:
    predicted = sample["predicted"]
    residuals = [a - p for a, p in zip(sample["actual"], predicted, strict=True)]
    alpha = 0.7 if len(predicted) <= 200 else 0.35
    ax.scatter(predicted, residuals, s=10, alpha=alpha, color=VALIDATION_COLOUR, edgecolors="none")
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"predicted {sample['target']}")
    ax.set_ylabel("actual − predicted")
    ax.set_title(f"{sample['target']}: residuals ({_shown(sample, report)})")
    ax.grid(True, alpha=0.3)


def job_figure(metrics: JobMetrics, *, title: str | None = None, best_epoch: int | None = None) -> Figure:
    """The figure of a job: a first row of learning curves (loss, the main metric) and, for classifiers, the
    confusion matrix; then, from the held-out report, the ROC curves beside per-class precision/recall/F1 bars,
    or per regression target (the first MAX_TARGET_ROWS) predicted vs actual beside the residuals."""
    epochs = metrics.get("epochs") or []
    if not epochs:
        raise ValueError(f"job {metrics.get('job_id')} has no epoch metrics yet; nothing to plot")
    names = {key for row in epochs for key in row["metrics"]}
    metric = main_metric(names)
    confusion = metrics.get("confusion_matrix")
    if not (confusion and confusion.get("labels") and confusion.get("matrix")):
        confusion = None
    report = metrics.get("report")
    classified = report is not None and bool(report["roc"] or report["classes"])
    every_target = (report["predictions"] or []) if report is not None else []
    targets = every_target[:MAX_TARGET_ROWS]
    first_row = 1 + (metric is not None) + (confusion is not None)
    rows = 1 + classified + len(targets)
    columns = max(first_row, 2 if rows > 1 else 1)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained")
    grid = figure.add_gridspec(rows, columns)
    _curves(figure.add_subplot(grid[0, 0]), epochs, "loss", "loss", best_epoch)
    if metric is not None:
        _curves(figure.add_subplot(grid[0, 1]), epochs, metric, {"accuracy": "accuracy", "r2": "R²"}[metric],
                best_epoch)
    if confusion is not None:
        _confusion(figure.add_subplot(grid[0, first_row - 1]), confusion)
    if report is not None:
        if classified:
            _roc(figure.add_subplot(grid[1, 0]), report["roc"] or [], report["split"])
            _per_class(figure.add_subplot(grid[1, 1:]), report)
        for row, sample in enumerate(targets, start=1):
            _predicted_vs_actual(figure.add_subplot(grid[row, 0]), sample, report)
            _residuals(figure.add_subplot(grid[row, 1]), sample, report)
    heading = title or f"job {metrics.get('job_id', '')}".strip()
    if len(every_target) > len(targets):
        heading += f" (the first {len(targets)} of {len(every_target)} targets)"
    figure.suptitle(heading)
    return figure


def plot_job(metrics: JobMetrics, output: str | Path, *, title: str | None = None,
             best_epoch: int | None = None) -> Path:
    """Write the job's figure (see job_figure) as a PNG."""
    figure = job_figure(metrics, title=title, best_epoch=best_epoch)
    output = Path(output)
    figure.savefig(output, format="png")
    return output
