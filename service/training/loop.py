"""The lecture's training loop: seeded, minibatches by randperm slicing, eval under inference_mode.

Everything a resumed attempt needs (weights, optimizer and scheduler state, epoch, RNG state, best-so-far)
is captured in a TrainState after each epoch, so training can continue where a lost attempt stopped.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.optimizer import ParamsT

from service.training import metrics as M
from service.training.nets import NetSpec, build_network, output_width

EVAL_CHUNK = 65536


class TrainingError(Exception):
    """Training cannot go on for a reason the user can fix (e.g. the loss diverged)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    gradient_clip_norm: float | None = None
    lr_schedule: dict[str, Any] | None = None  # {"type": "step"|"cosine"|"plateau", ...}
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
    """Preprocessed arrays: X float32 [n, d]; y class indices (int64), standardised targets (float32
    [n] or [n, k]) or, for an autoencoder, nothing (the inputs are the targets)."""

    task: str
    X_train: NDArray[np.float32]
    y_train: NDArray[Any] | None
    X_val: NDArray[np.float32]
    y_val: NDArray[Any] | None
    n_classes: int = 0
    target_scale: list[float] | float = 1.0
    class_weights: list[float] | None = None

    @property
    def n_outputs(self) -> int:
        n_targets = 1 if self.y_train is None or self.y_train.ndim == 1 else self.y_train.shape[1]
        return output_width(self.task, n_inputs=self.X_train.shape[1], n_classes=self.n_classes,
                            n_targets=n_targets)


@dataclass
class TrainState:
    """A resumable snapshot taken at the end of an epoch."""

    epoch: int
    net: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    generator: torch.Tensor
    best_epoch: int | None
    best_score: float
    best_net: dict[str, torch.Tensor] | None
    rng: dict[str, torch.Tensor]  # the global generators (dropout draws from them)


@dataclass
class EpochReport:
    """What the loop tells its caller after each epoch: the figures, the history so far, and the resumable state,
    built only when the caller asks for it (a checkpoint is due)."""

    epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    snapshot: Callable[[], Any]


# The caller answers each report with None to go on, or the reason to stop after this epoch ("cancelled",
# "time_limit"): the loop then returns at once with `stopped_by` set, keeping nothing half-done.
EpochHook = Callable[[EpochReport], str | None]


@dataclass(frozen=True)
class StepReport:
    """Where training stands inside an epoch: sent to a StepHook every `STEP_REPORT_S` seconds of a long epoch."""

    epoch: int
    step: int  # steps done in this epoch
    steps: int  # steps in the epoch
    samples_per_second: float  # rows stepped on per second so far in this epoch
    eta_s: float  # seconds left in this epoch at that rate


StepHook = Callable[[StepReport], None]
# The first in-epoch report comes this long into an epoch and the next ones as often: shorter epochs send none.
STEP_REPORT_S = 2.0


class StepClock:
    """Calls a StepHook every STEP_REPORT_S seconds of an epoch; reading the clock costs well under a microsecond
    a step (nothing waits for the device)."""

    def __init__(self, hook: StepHook | None, epoch: int, steps: int, every_s: float | None = None) -> None:
        self.hook, self.epoch, self.steps = hook, epoch, steps
        self.every_s = STEP_REPORT_S if every_s is None else every_s
        self.started = time.perf_counter()
        self.next_at = self.started + self.every_s

    def tick(self, step: int, samples: int) -> None:
        """`step` steps (`samples` rows) of the epoch are done."""
        if self.hook is None:
            return
        now = time.perf_counter()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        elapsed = now - self.started
        self.hook(StepReport(epoch=self.epoch, step=step, steps=self.steps, samples_per_second=samples / elapsed,
                             eta_s=elapsed / step * (self.steps - step)))


@dataclass
class TrainResult:
    net: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str | None = None  # the hook's reason, when it stopped training
    best_epoch: int | None = None  # the epoch whose weights were kept, when early stopping monitored one
    stopped_at: int | None = None  # the epoch early stopping ended training, if it did
    info: dict[str, Any] = field(default_factory=dict)  # facts worth showing with the job's result
    kept_metrics: dict[str, Any] | None = None  # the kept model's validation figures, when not one epoch's row
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None  # (outputs, targets) those figures came from

    @property
    def cancelled(self) -> bool:
        return self.stopped_by == "cancelled"


def _rng_states(dev: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(dev)
    return states


def _lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "rmse", "mse", "mae"))


def make_optimizer(config: TrainConfig, params: ParamsT, device: torch.device | None = None) -> torch.optim.Optimizer:
    lr, wd = config.learning_rate, config.weight_decay
    # The fused Adam kernel updates every parameter in one pass instead of a dozen small ops per tensor:
    # about 2.5× cheaper steps on CPU, where small batches spend a third of their time in the optimizer.
    fused = device is not None and device.type in ("cpu", "cuda")
    match config.optimizer:
        case "sgd":
            # fused: one kernel for the update, as for Adam (the for-loop implementation launches a few small ops
            # per parameter tensor and step)
            return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                                   weight_decay=wd, fused=fused or None)
        case "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused or None)
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused or None)
        case "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
        case "lbfgs":
            return torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=20, line_search_fn="strong_wolfe")
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> LRScheduler | None:
    s = config.lr_schedule
    if not s or s.get("type", "none") == "none":
        return None
    match s["type"]:
        case "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.get("step_size", 30),
                                                   gamma=s.get("gamma", 0.1))
        case "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs,
                                                              eta_min=s.get("min_lr", 0.0))
        case "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=s.get("factor", 0.1),
                                                              patience=s.get("patience", 10),
                                                              min_lr=s.get("min_lr", 0.0))
    raise ValueError(f"unknown learning-rate schedule {s['type']!r}")


class Task:
    """Targets, loss and metrics of one task, on one device."""

    def __init__(self, data: TrainData, device: torch.device) -> None:
        self.data = data
        self.device = device
        self.weight = (torch.as_tensor(data.class_weights, dtype=torch.float32, device=device)
                       if data.class_weights is not None else None)
        self.scale = torch.as_tensor(np.atleast_1d(data.target_scale), dtype=torch.float32, device=device)

    def targets(self, X: torch.Tensor, y: NDArray[Any] | None) -> torch.Tensor:
        if self.data.task == "autoencoder":
            return X
        if y is None:
            raise ValueError(f"a {self.data.task} task needs targets")
        if self.data.task == "classification":
            return torch.as_tensor(y, dtype=torch.long, device=self.device)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        return torch.as_tensor(y, dtype=torch.float32, device=self.device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.data.task == "classification":
            return M.classification_loss(out, y, self.data.n_classes, self.weight)
        return M.regression_loss(out, y)

    def metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.data.task == "classification":
            return M.classification_metrics(out, y, self.data.n_classes, self.weight)
        if self.data.task == "autoencoder":
            return {"loss": M.regression_loss(out, y)}
        return M.regression_metrics(out, y, self.scale)


def _lbfgs_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, task: "Task", X: torch.Tensor, Y: torch.Tensor,
                 weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One full-batch L-BFGS step; weight decay as an L2 term on the weights (L-BFGS has none of its own).
    Returns the outputs and loss at the step's start, as a minibatch epoch reports its steps' own."""
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    first: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        out = net(X)
        loss = task.loss(out, Y)
        if not first:
            first.extend([out.detach(), loss.detach()])
        if weight_decay:
            loss = loss + weight_decay / 2 * sum((w**2).sum() for w in weights)
        torch.autograd.backward(loss)  # = loss.backward(), which torch leaves unannotated
        return loss

    # LBFGS takes the loss tensor from its closure; Optimizer.step's annotation says float.
    optimizer.step(cast(Callable[[], float], closure))
    return first[0], first[1]


def forward_chunked(net: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The network's outputs for all rows, in chunks so that large splits fit in memory."""
    return torch.cat([net(X[i:i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)])


def as_floats(figures: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """Scalar tensors as Python floats (one host sync); NaN and infinity become None."""
    if not figures:
        return {}
    values = torch.stack([M.wide(v) for v in figures.values()]).tolist()
    return {k: (v if math.isfinite(v) else None) for k, v in zip(figures, values, strict=True)}


def evaluate(net: nn.Module, task: Task, X: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """Every metric of one split as Python floats (one host sync); call under eval() + inference_mode()."""
    return as_floats(task.metrics(forward_chunked(net, X), y))


class flushed_denormals:
    """Denormal floats flushed to zero while training: activations and optimizer moments that drift towards zero
    sink into denormals (below 1.2e-38), which the CPU handles dozens of times slower (measured: SGD with momentum
    0.9 at lr 0.1, 1.8 s → 1.0 s per epoch). Only values that small change (to 0): Adam's steps are bit for bit the
    same; RMSprop's can differ in the last bits. Processes that only train (job processes, the worker's fork
    server) flush for good (flush_denormals_for_good)."""

    def __enter__(self) -> None:
        self.flushed = torch.set_flush_denormal(True)

    def __exit__(self, *exc: object) -> None:
        if self.flushed and not PROCESS_FLUSHES_DENORMALS:
            torch.set_flush_denormal(False)


# Set by a process that flushes denormals for good (see flush_denormals_for_good), so that training does not turn
# flushing off when it ends.
PROCESS_FLUSHES_DENORMALS = False


def flush_denormals_for_good() -> bool:
    """Flush denormals in this whole process (a job process, a worker's fork server); False where the CPU cannot."""
    global PROCESS_FLUSHES_DENORMALS
    PROCESS_FLUSHES_DENORMALS = torch.set_flush_denormal(True)
    return PROCESS_FLUSHES_DENORMALS


def train(data: TrainData, net_spec: NetSpec, config: TrainConfig, device: str = "cpu",
          on_epoch: EpochHook | None = None, resume: TrainState | None = None,
          history: list[dict[str, Any]] | None = None, on_step: StepHook | None = None) -> TrainResult:
    """Train a network, reporting every epoch to `on_epoch` (see EpochHook) and, inside a long epoch, its steps to
    `on_step`; `resume` (with the `history` so far) continues from a TrainState that a report's snapshot built."""
    with flushed_denormals():
        return _train(data, net_spec, config, device, on_epoch, resume, history, on_step)


def _train_figures(task: Task, outputs: list[torch.Tensor], rows: list[torch.Tensor], Y: torch.Tensor,
                   running: torch.Tensor, seen: int, full: bool) -> dict[str, torch.Tensor]:
    """The epoch's training figures from its own steps' outputs. Each epoch: loss and accuracy for classes (every
    regression figure: none needs a sort); `full`, at the last epoch: every metric, AUROC and F1 included."""
    if not outputs:
        return {"loss": running / max(seen, 1)}
    out, y = torch.cat(outputs), Y[torch.cat(rows)]
    if full or task.data.task != "classification":
        return task.metrics(out, y)
    n_classes = task.data.n_classes
    return {"loss": M.classification_loss(out, y, n_classes, task.weight),
            "accuracy": (M.predicted_classes(out, n_classes) == y).sum() / len(y)}


def _train(data: TrainData, net_spec: NetSpec, config: TrainConfig, device: str, on_epoch: EpochHook | None,
           resume: TrainState | None, history: list[dict[str, Any]] | None,
           on_step: StepHook | None) -> TrainResult:
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    net = build_network(net_spec, data.X_train.shape[1], data.n_outputs).to(dev)
    optimizer = make_optimizer(config, net.parameters(), dev)
    scheduler = make_scheduler(config, optimizer)
    task = Task(data, dev)
    X = torch.as_tensor(data.X_train, dtype=torch.float32, device=dev)
    Xv = torch.as_tensor(data.X_val, dtype=torch.float32, device=dev)
    Y, Yv = task.targets(X, data.y_train), task.targets(Xv, data.y_val)
    n = len(X)
    has_batch_norm = any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    gen = torch.Generator(device=dev).manual_seed(config.seed)
    result = TrainResult(net=net, history=list(history or []))
    monitor = config.early_stopping_metric if config.early_stopping_patience > 0 and len(Xv) else None
    sign = 1.0 if monitor is None or _lower_is_better(monitor) else -1.0
    best_score = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    first_epoch = 1
    if resume is not None:
        net.load_state_dict(resume.net)
        optimizer.load_state_dict(resume.optimizer)
        if scheduler is not None and resume.scheduler is not None:
            scheduler.load_state_dict(resume.scheduler)
        gen.set_state(resume.generator)
        torch.set_rng_state(resume.rng["cpu"])
        if dev.type == "cuda" and "cuda" in resume.rng:
            torch.cuda.set_rng_state(resume.rng["cuda"], dev)
        result.best_epoch, best_score, best_state = resume.best_epoch, resume.best_score, resume.best_net
        first_epoch = resume.epoch + 1
    net.train()
    # Train figures come from the epoch's own forward passes (training mode, each batch seen by the weights of its
    # step), gathered on the device: a second forward pass over the whole training set would cost a third of the
    # epoch again. Each epoch computes the cheap ones; the last computes all (an AUROC sorts every output). An
    # autoencoder's outputs are as wide as its inputs, so it keeps only the loss.
    gather = data.task != "autoencoder"
    steps = math.ceil(n / config.batch_size) if config.optimizer != "lbfgs" else 1
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        clock = StepClock(on_step, epoch, steps)
        perm = torch.randperm(n, generator=gen, device=dev)
        running = torch.zeros((), device=dev)
        seen, outputs, rows = 0, [], []
        if config.optimizer == "lbfgs":
            # Full batch: one L-BFGS step (up to 20 line-searched iterations) per epoch on every training row, so
            # that logistic regression reaches the optimum of its log-likelihood instead of creeping towards it.
            out, loss = _lbfgs_epoch(net, optimizer, task, X, Y, config.weight_decay)
            running, seen, outputs, rows = loss * n, n, [out], [torch.arange(n, device=dev)]
        for step, start in enumerate(range(0, n if config.optimizer != "lbfgs" else 0, config.batch_size), 1):
            idx = perm[start:start + config.batch_size]
            if has_batch_norm and len(idx) < 2 and n > 1:
                continue  # batch norm cannot normalise a batch of one in train mode
            out = net(X[idx])
            loss = task.loss(out, Y[idx])
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            if config.gradient_clip_norm:
                nn.utils.clip_grad_norm_(net.parameters(), config.gradient_clip_norm)
            optimizer.step()
            running += loss.detach() * len(idx)
            seen += len(idx)
            if gather:
                outputs.append(out.detach())
                rows.append(idx)
            clock.tick(step, seen)
        net.eval()
        with torch.inference_mode():
            figures = {"train_" + k: v for k, v in
                       _train_figures(task, outputs, rows, Y, running, seen, full=False).items()}
            if len(Xv):
                figures |= {"val_" + k: v for k, v in task.metrics(forward_chunked(net, Xv), Yv).items()}
            row = as_floats(figures)
        net.train()
        # the validation loss also catches weights that turned NaN in the epoch's last step
        train_loss, val_loss = row["train_loss"], row.get("val_loss")
        if train_loss is None or (len(Xv) and val_loss is None):
            raise TrainingError(
                f"loss became NaN at epoch {epoch}: training diverged; lower the learning rate "
                f"(now {config.learning_rate}) or check the data for extreme values"
            )
        row["lr"] = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss if val_loss is not None else train_loss)
        elif scheduler is not None:
            scheduler.step()
        stop = False
        if monitor is not None:
            if monitor not in row:
                raise ValueError(f"early stopping metric {monitor!r} is not computed for this task")
            value = row[monitor]
            score = sign * value if value is not None else math.inf
            if score < best_score:
                best_score, result.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            # No epoch kept yet (the metric was NaN in every epoch so far): patience counts from the start.
            elif epoch - (result.best_epoch or 0) >= config.early_stopping_patience:
                result.stopped_at = epoch
                stop = True
        if (stop or epoch == config.epochs) and gather and data.task == "classification":
            with torch.inference_mode():
                row |= as_floats({"train_" + k: v for k, v in
                                  _train_figures(task, outputs, rows, Y, running, seen, full=True).items()})
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)

        def snapshot(epoch: int = epoch, best_score: float = best_score,
                     best_state: dict[str, torch.Tensor] | None = best_state,
                     best_epoch: int | None = result.best_epoch) -> TrainState:
            return TrainState(epoch=epoch, net=net.state_dict(), optimizer=optimizer.state_dict(),
                              scheduler=scheduler.state_dict() if scheduler is not None else None,
                              generator=gen.get_state(), best_epoch=best_epoch, best_score=best_score,
                              best_net=best_state, rng=_rng_states(dev))

        if on_epoch is not None:
            reason = on_epoch(EpochReport(epoch=epoch, metrics=row, history=result.history, snapshot=snapshot))
            if reason is not None:
                result.stopped_by = reason
                break
        if stop:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result
