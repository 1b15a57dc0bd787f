"""Rosenblatt's perceptron, exactly as the lecture's pseudocode: no gradient, no optimizer.

    w := 0 (bias included)
    for every epoch, for every <x, y> in D:
        ŷ := σ(xᵀw)  with σ the threshold unit (1 if xᵀw > 0 else 0)
        w := w + (y − ŷ)·x
"""

import time
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from service.training.loop import EpochHook, EpochReport, TrainConfig, TrainData, TrainResult
from service.training.nets import NetSpec, build_network


def threshold(z: NDArray[np.float64]) -> NDArray[np.int64]:
    return (z > 0).astype(np.int64)


def train_perceptron(data: TrainData, config: TrainConfig,
                     on_epoch: EpochHook | None = None) -> TrainResult:
    """Per-example updates until an epoch makes no mistake or the epochs run out."""
    if data.task != "classification" or data.n_classes != 2:
        raise ValueError("the perceptron learns binary targets only")
    X = np.hstack([data.X_train.astype(np.float64), np.ones((len(data.X_train), 1))])
    Xv = np.hstack([data.X_val.astype(np.float64), np.ones((len(data.X_val), 1))])
    y, yv = data.y_train, data.y_val
    if y is None:
        raise ValueError("the perceptron learns from targets; the training data has none")
    w = np.zeros(X.shape[1])
    history: list[dict[str, Any]] = []
    stopped_by = None
    converged_at = None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        mistakes = 0
        for xi, yi in zip(X, y, strict=True):
            err = yi - (1 if xi @ w > 0 else 0)
            if err:
                w += err * xi
                mistakes += 1
        row: dict[str, Any] = {"train_accuracy": float((threshold(X @ w) == y).mean()), "train_mistakes": mistakes}
        if len(Xv):
            row["val_accuracy"] = float((threshold(Xv @ w) == yv).mean())
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if on_epoch is not None:
            # Nothing to resume from: a perceptron's epoch is a few milliseconds.
            reason = on_epoch(EpochReport(epoch=epoch, metrics=row, history=history, snapshot=lambda: None))
            if reason is not None:
                stopped_by = reason
                break
        if mistakes == 0:
            converged_at = epoch
            break
    net = build_network(NetSpec(type="perceptron"), X.shape[1] - 1, 1)
    unit = net[0]
    assert isinstance(unit, nn.Linear)  # build_network makes a perceptron one Linear layer
    with torch.no_grad():
        unit.weight.copy_(torch.as_tensor(w[:-1], dtype=torch.float32)[None, :])
        unit.bias.fill_(float(w[-1]))
    result = TrainResult(net=net.eval(), history=history, stopped_by=stopped_by)
    best_train = max(r["train_accuracy"] for r in result.history) if result.history else 0.0
    if converged_at is not None:
        result.info = {"converged": True, "converged_at_epoch": converged_at,
                       "note": f"converged at epoch {converged_at}: every training example is classified "
                               "correctly"}
    else:
        result.info = {"converged": False,
                       "note": f"did not converge in {len(result.history)} epochs: the training data are not "
                               f"linearly separable for a perceptron (best training accuracy {best_train:.3f}); "
                               "an mlp with a hidden layer can fit such data"}
    return result
