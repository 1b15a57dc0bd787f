"""Per-split metrics, computed on the device with vectorised tensor code."""

import torch
from torch.nn import functional as F


def wide(t: torch.Tensor) -> torch.Tensor:
    """float64 for exact ratios (27/30 is 0.9, not 0.8999999761); MPS has no float64."""
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def classification_loss(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Binary cross-entropy with logits for two classes, cross-entropy for more."""
    if n_classes == 2:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def predicted_classes(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    if n_classes == 2:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def regression_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, y)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict[str, torch.Tensor]:
    """Mean loss and accuracy of a whole split (tensors; the caller syncs once)."""
    return {
        "loss": classification_loss(logits, y, n_classes),
        "accuracy": wide((predicted_classes(logits, n_classes) == y).sum()) / len(y),
    }


def regression_metrics(pred: torch.Tensor, y: torch.Tensor, target_scale: float) -> dict[str, torch.Tensor]:
    """MSE on standardised targets as the loss; RMSE in the target's own units; R²."""
    mse = F.mse_loss(pred, y)
    ss_res = ((pred - y) ** 2).sum()
    ss_tot = ((y - y.mean(dim=0)) ** 2).sum()
    r2 = 1 - ss_res / ss_tot.clamp_min(torch.finfo(y.dtype).tiny)
    return {"loss": mse, "rmse": mse.sqrt() * target_scale, "r2": r2}
