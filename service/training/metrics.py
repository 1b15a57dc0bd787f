"""Per-split metrics, computed on the device with vectorised tensor code (no per-sample Python loops)."""

import torch
from torch.nn import functional as F

# The figures each task computes per split, and those early stopping may monitor (torch-free, in `tasks`).
from service.training.tasks import METRICS as METRICS
from service.training.tasks import MONITORED as MONITORED
from service.training.tasks import metric_names as metric_names


def wide(t: torch.Tensor) -> torch.Tensor:
    """float64 for exact ratios (27/30 is 0.9, not 0.8999999761); MPS has no float64."""
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def classification_loss(logits: torch.Tensor, y: torch.Tensor, n_classes: int,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits for two classes, cross-entropy for more; optional class weights."""
    if n_classes == 2:
        target = y.to(logits.dtype)
        if weight is None:
            return F.binary_cross_entropy_with_logits(logits[:, 0], target)
        per_row = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        w = weight[y]
        return (per_row * w).sum() / w.sum()
    return F.cross_entropy(logits, y, weight=weight)


def class_probabilities(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n, n_classes] probabilities from the network's logits."""
    if n_classes == 2:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p1, p1], dim=1)
    return torch.softmax(logits, dim=1)


def predicted_classes(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    if n_classes == 2:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def regression_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, y)


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[true, predicted] counts."""
    return torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last dimension, ties sharing their average rank (like scipy.stats.rankdata); one
    sort for every row of a [k, n] matrix rather than a loop over rows. Sorting in the scores' own dtype gives the
    same order and ties as in float64, in less time; the ranks themselves are float64."""
    sorted_x, order = torch.sort(x, dim=-1)
    n = x.shape[-1]
    pos = torch.arange(n, device=x.device).expand_as(x)
    first = torch.ones_like(sorted_x, dtype=torch.bool)  # first of its run of equal values
    first[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    last = torch.ones_like(first)
    last[..., :-1] = first[..., 1:]
    start = torch.where(first, pos, 0).cummax(dim=-1).values
    end = torch.where(last, pos, n - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    avg = (start + end).to(torch.float64 if x.device.type != "mps" else torch.float32) / 2 + 1
    return torch.empty_like(avg).scatter_(-1, order, avg)


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) identity; NaN when one class is absent.
    Scores [n] or [k, n] (one curve per row, e.g. one-vs-rest per class) with positives of the same shape."""
    n_pos = positive.sum(dim=-1)
    n_neg = positive.shape[-1] - n_pos
    ranks = _average_ranks(scores)
    u = (ranks * positive).sum(dim=-1) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def class_figures(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall, F1 and support from a [true, predicted] confusion matrix, in wide floats; a
    ratio with nothing to divide by is 0, as scikit-learn's zero_division=0 has it."""
    cm = wide(cm)
    tp = cm.diagonal()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, n_classes: int,
                           weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Loss, accuracy, balanced accuracy, macro precision/recall/F1, AUROC and log loss of one split."""
    pred = predicted_classes(logits, n_classes)
    cm = wide(confusion_matrix(y, pred, n_classes))
    tp = cm.diagonal()
    per_class = class_figures(cm)
    precision, recall, f1 = per_class["precision"], per_class["recall"], per_class["f1"]
    present = per_class["support"] > 0
    probs = class_probabilities(logits, n_classes)
    if n_classes == 2:
        auroc = binary_auroc(probs[:, 1], y == 1)
    else:
        classes = torch.arange(n_classes, device=y.device)
        one_vs_rest = binary_auroc(probs.T, y[None, :] == classes[:, None])
        auroc = one_vs_rest[~one_vs_rest.isnan()].mean()
    eps = 1e-15
    log_loss = -torch.log(wide(probs.gather(1, y[:, None])[:, 0]).clamp(eps, 1 - eps)).mean()
    n_present = present.sum().clamp_min(1)
    return {
        "loss": classification_loss(logits, y, n_classes, weight),
        "accuracy": tp.sum() / len(y),
        "balanced_accuracy": recall.sum() / n_present,
        "precision_macro": precision[present].sum() / n_present,
        "recall_macro": recall.sum() / n_present,
        "f1_macro": f1[present].sum() / n_present,
        "auroc": auroc,
        "log_loss": log_loss,
    }


def roc_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(false-positive rates, true-positive rates) at every distinct score taken as the threshold, from (0, 0) to
    (1, 1): the points of scikit-learn's roc_curve(drop_intermediate=False). Rates are NaN when one class is
    absent."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, hits = scores[order], wide(positive[order])
    # The last row of each run of equal scores: a threshold admits every row with its score at once.
    last = torch.ones_like(ranked, dtype=torch.bool)
    last[:-1] = ranked[1:] != ranked[:-1]
    true_pos, false_pos = hits.cumsum(0)[last], (1 - hits).cumsum(0)[last]
    zero = true_pos.new_zeros(1)
    return torch.cat([zero, false_pos]) / false_pos[-1], torch.cat([zero, true_pos]) / true_pos[-1]


def thin_curve(x: torch.Tensor, y: torch.Tensor, max_points: int) -> torch.Tensor:
    """Indices of at most `max_points` points of a curve whose x and y never decrease (an ROC curve), spread
    evenly along its length (x + y) rather than over its rows, first and last point kept."""
    n = len(x)
    if n <= max_points:
        return torch.arange(n, device=x.device)
    along = (x + y).contiguous()
    goals = torch.linspace(0, float(along[-1]), max_points, device=x.device, dtype=along.dtype)
    picked = torch.searchsorted(along, goals).clamp_max(n - 1)
    picked[0], picked[-1] = 0, n - 1
    kept: torch.Tensor = torch.unique(picked)
    return kept


def regression_metrics(pred: torch.Tensor, y: torch.Tensor, target_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss (MSE on standardised targets); MSE, RMSE and MAE in the target's own units; R² (mean over targets)."""
    diff = (pred - y) * target_scale
    mse = (diff**2).mean()
    ss_res = ((pred - y) ** 2).sum(dim=0)
    ss_tot = ((y - y.mean(dim=0)) ** 2).sum(dim=0)
    r2 = (1 - ss_res / ss_tot.clamp_min(torch.finfo(y.dtype).tiny)).mean()
    return {"loss": F.mse_loss(pred, y), "mse": mse, "rmse": mse.sqrt(), "mae": diff.abs().mean(), "r2": r2}
