"""The lecture's training loop: seeded, minibatches by randperm slicing, eval under inference_mode."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from service.training import metrics as M
from service.training.nets import NetSpec, build_network

EVAL_CHUNK = 65536


class TrainingError(Exception):
    """Training cannot go on for a reason the user can fix (e.g. the loss diverged)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    seed: int = 0
    # Stop when the monitored validation metric has not improved for this many epochs (0: never),
    # and keep the weights of the best epoch.
    early_stopping_patience: int = 20
    early_stopping_metric: str = "val_loss"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainData:
    """Preprocessed arrays: X float32 [n, d]; y class indices (int64) or standardised targets (float32)."""

    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    n_classes: int = 0
    target_scale: float = 1.0

    @property
    def n_outputs(self) -> int:
        if self.task == "classification":
            return 1 if self.n_classes == 2 else self.n_classes
        return 1 if self.y_train.ndim == 1 else self.y_train.shape[1]


@dataclass
class TrainResult:
    net: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    cancelled: bool = False
    best_epoch: int | None = None  # the epoch whose weights were kept, when early stopping monitored one
    stopped_at: int | None = None  # the epoch early stopping ended training, if it did


def _lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "rmse", "mse", "mae"))


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    lr, wd = config.learning_rate, config.weight_decay
    match config.optimizer:
        case "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                                   weight_decay=wd)
        case "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        case "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _tensors(data: TrainData, device: torch.device):
    def y_tensor(y: np.ndarray) -> torch.Tensor:
        if data.task == "classification":
            return torch.as_tensor(y, dtype=torch.long, device=device)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        return torch.as_tensor(y, dtype=torch.float32, device=device)

    return (torch.as_tensor(data.X_train, dtype=torch.float32, device=device), y_tensor(data.y_train),
            torch.as_tensor(data.X_val, dtype=torch.float32, device=device), y_tensor(data.y_val))


def forward_chunked(net: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The network's outputs for all rows, in chunks so that large splits fit in memory."""
    return torch.cat([net(X[i:i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)])


def evaluate(net: nn.Module, X: torch.Tensor, y: torch.Tensor, data: TrainData) -> dict[str, torch.Tensor]:
    """Metrics of one split; call under eval() and inference_mode()."""
    out = forward_chunked(net, X)
    if data.task == "classification":
        return M.classification_metrics(out, y, data.n_classes)
    return M.regression_metrics(out, y, data.target_scale)


def loss_fn(data: TrainData) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if data.task == "classification":
        return lambda out, y: M.classification_loss(out, y, data.n_classes)
    return M.regression_loss


def train(data: TrainData, net_spec: NetSpec, config: TrainConfig, device: str = "cpu",
          on_epoch: Callable[[int, dict[str, float]], bool] | None = None) -> TrainResult:
    """Train a fresh network; on_epoch(epoch, metrics) returning False stops after that epoch."""
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    net = build_network(net_spec, data.X_train.shape[1], data.n_outputs).to(dev)
    optimizer = make_optimizer(config, net.parameters())
    criterion = loss_fn(data)
    X, Y, Xv, Yv = _tensors(data, dev)
    n = len(X)
    has_batch_norm = any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    gen = torch.Generator(device=dev).manual_seed(config.seed)
    result = TrainResult(net=net)
    monitor = config.early_stopping_metric if config.early_stopping_patience > 0 and len(Xv) else None
    sign = 1.0 if monitor is None or _lower_is_better(monitor) else -1.0
    best_score, best_state = math.inf, None
    net.train()
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=dev)
        running = torch.zeros((), device=dev)
        for start in range(0, n, config.batch_size):
            idx = perm[start:start + config.batch_size]
            if has_batch_norm and len(idx) < 2 and n > 1:
                continue  # batch norm cannot normalise a batch of one in train mode
            loss = criterion(net(X[idx]), Y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach() * len(idx)
        net.eval()
        with torch.inference_mode():
            figures = {"train_" + k: v for k, v in evaluate(net, X, Y, data).items()}
            if len(Xv):
                figures |= {"val_" + k: v for k, v in evaluate(net, Xv, Yv, data).items()}
            names = list(figures)
            values = torch.stack([M.wide(figures[k]) for k in names] + [M.wide(running / n)]).tolist()
        net.train()
        if not (math.isfinite(values[-1]) and math.isfinite(values[names.index("train_loss")])):
            raise TrainingError(
                f"loss became NaN at epoch {epoch}: training diverged; lower the learning rate "
                f"(now {config.learning_rate}) or check the data for extreme values"
            )
        row = {k: (v if math.isfinite(v) else None) for k, v in zip(names, values[:-1], strict=True)}
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)
        if on_epoch is not None and on_epoch(epoch, row) is False:
            result.cancelled = True
            break
        if monitor is not None:
            if monitor not in row:
                raise ValueError(f"early stopping metric {monitor!r} is not computed for this task")
            score = sign * row[monitor] if row[monitor] is not None else math.inf
            if score < best_score:
                best_score, result.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif epoch - result.best_epoch >= config.early_stopping_patience:
                result.stopped_at = epoch
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result
