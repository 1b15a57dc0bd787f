"""The default model: K member MLPs trained as one batched network (weights shaped [members, in, out]).

Every member has its own initialisation, learning rate, weight decay and dropout rate, drawn from the spec's
ranges, and all of them step on the same minibatches in one forward/backward pass. Members that share their
hyperparameters form a *config*. On small data the members are cross-fitted: member m of a config holds out fold
m mod F, so every row trains most members and each row's out-of-fold prediction comes only from members that
never trained on it; the members of a config keep the weights of one epoch, the one with the config's lowest loss
over all their held-out rows. On large data every member validates on one shared split. Configs
are then chosen greedily on those held-out predictions (Caruana et al., "Ensemble selection from libraries of
models", 2004), and the model keeps the chosen members with their weights.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from service.training import metrics as M
from service.training.batched_step import BatchedStep
from service.training.linear import LinearFit, fit_linear
from service.training.loop import (
    EVAL_CHUNK,
    EpochHook,
    EpochReport,
    StepClock,
    StepHook,
    Task,
    TrainData,
    TrainingError,
    TrainResult,
    as_floats,
    flushed_denormals,
)
from service.training.nets import EnsembleNet

# Steps whose outputs are kept before the epoch's train accuracy counts them (see _train_ensemble).
FOLD_STEPS = 64


@dataclass(frozen=True)
class EnsembleConfig:
    members: int = 16
    folds: int = 4  # 1: every member validates on the data's validation split
    hidden_layers: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    linear_skip: bool = True
    # Also fit L2-regularised linear models per fold (service/training/linear.py) for selection to choose from;
    # they live on the skip path, so they need linear_skip.
    linear_members: bool = True
    epochs: int = 200
    batch_size: int = 64
    learning_rate_range: tuple[float, float] = (2e-3, 2e-2)
    weight_decay_range: tuple[float, float] = (1e-5, 1e-2)
    dropout_range: tuple[float, float] = (0.0, 0.3)
    early_stopping_patience: int = 16
    # An epoch counts as progress for patience only if it lowers a member's best held-out loss by this fraction
    # (its weights are kept whenever the loss is lower at all): long tails of tiny gains end sooner.
    min_improvement: float = 2e-3
    gradient_clip_norm: float | None = None
    selection_rounds: int = 32
    seed: int = 0

    @property
    def configs(self) -> int:
        return self.members // self.folds


@dataclass(frozen=True)
class Member:
    index: int
    config: int
    fold: int | None  # the fold it holds out (None: the shared validation split)
    learning_rate: float
    weight_decay: float
    dropout: float
    l2: float | None = None  # a linear member's L2 strength (its other hyperparameters are 0: it is fit exactly)


def _stratified(rng: np.random.Generator, n: int, lo: float, hi: float, log: bool) -> NDArray[np.float64]:
    """One draw from each of n equal strata of [lo, hi] (of its logarithm when `log`), in random order: the
    configs cover the range evenly whatever the seed, so that seeds differ in detail, not in luck."""
    u = (rng.permutation(n) + rng.random(n)) / n
    if lo == hi:
        return np.full(n, lo)
    if log:
        return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


def member_plan(cfg: EnsembleConfig) -> list[Member]:
    """Each member's config, held-out fold and hyperparameters, drawn from the seed."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.configs
    lrs = _stratified(rng, n, *cfg.learning_rate_range, log=True)
    wd_lo, wd_hi = cfg.weight_decay_range
    wds = _stratified(rng, n, wd_lo, wd_hi, log=wd_lo > 0)
    drops = _stratified(rng, n, *cfg.dropout_range, log=False)
    return [Member(index=m, config=m // cfg.folds, fold=m % cfg.folds if cfg.folds > 1 else None,
                   learning_rate=float(lrs[m // cfg.folds]), weight_decay=float(wds[m // cfg.folds]),
                   dropout=float(drops[m // cfg.folds])) for m in range(cfg.members)]


def assign_folds(n: int, folds: int, seed: int, strata: NDArray[Any] | None = None) -> NDArray[np.int64]:
    """Fold of each row, seeded; classes spread evenly over the folds when `strata` is given."""
    rng = np.random.default_rng([seed, 1])
    fold = np.empty(n, dtype=np.int64)
    if strata is None:
        fold[rng.permutation(n)] = np.arange(n) % folds
        return fold
    offset = 0
    for cls in np.unique(strata):
        rows = np.nonzero(strata == cls)[0]
        rows = rows[rng.permutation(rows.size)]
        fold[rows] = (offset + np.arange(rows.size)) % folds
        offset += rows.size
    return fold


class MemberAdamW:
    """AdamW (decoupled weight decay, as torch.optim.AdamW) with one learning rate and one weight decay per
    member: every parameter's first dimension is the member.

    The parameters, their gradients and both moments each live in one flat buffer (the parameters and their
    `.grad` become views into it, shaped and strided as before), so that the moments' update is a handful of
    operations on one tensor rather than a handful per parameter tensor: the same arithmetic on the same values,
    so the same results bit for bit.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.weight_decay = lr, weight_decay
        self.betas, self.eps = betas, eps
        self.steps = 0
        self._flat = torch.cat([p.detach().reshape(-1) for p in params])
        self._grad = torch.zeros_like(self._flat)
        self._m = torch.zeros_like(self._flat)
        self._v = torch.zeros_like(self._flat)
        with torch.no_grad():
            for p, value, grad in zip(params, self._views(self._flat), self._views(self._grad), strict=True):
                p.data = value
                p.grad = grad
        self.exp_avg, self.exp_avg_sq = self._views(self._m), self._views(self._v)

    def _views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for p in self.params:
            out.append(buf[start:start + p.numel()].view(p.shape))
            start += p.numel()
        return out

    def zero_grad(self) -> None:
        self._grad.zero_()

    def clip_(self, max_norm: float) -> None:
        """Scale each member's gradient so that its own norm is at most max_norm."""
        squares = [p.grad.pow(2).flatten(1).sum(1) for p in self.params if p.grad is not None]
        if not squares:
            return
        sq = sum(squares[1:], start=squares[0])
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
        grad, m, v = self._grad, self._m, self._v
        m.lerp_(grad, 1 - b1)
        v.mul_(b2)
        v.addcmul_(grad, grad, value=1 - b2)
        denom = v.sqrt()
        denom.div_(math.sqrt(bc2))
        denom.add_(self.eps)
        updates = self._views(m / denom)
        decay = 1 - self.lr * self.weight_decay
        step_size = self.lr / bc1
        # One foreach call each for the decay and the step, the per-member factors viewed once per rank (every
        # parameter of an EnsembleNet is [K, ·, ·]).
        views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in self.params:
            if p.dim() not in views:
                shape = (-1, *[1] * (p.dim() - 1))
                views[p.dim()] = decay.view(shape), step_size.view(shape)
        tensors: list[torch.Tensor] = [*self.params]
        torch._foreach_mul_(tensors, [views[p.dim()][0] for p in self.params])
        torch._foreach_addcmul_(tensors, updates, [views[p.dim()][1] for p in self.params], value=-1)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "exp_avg": list(self.exp_avg), "exp_avg_sq": list(self.exp_avg_sq),
                "lr": self.lr, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for mine, theirs in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True):
            mine.copy_(theirs)
        self.lr.copy_(state["lr"])
        self.weight_decay.copy_(state["weight_decay"])


@dataclass
class EnsembleState:
    """A resumable snapshot of ensemble training, taken at the end of an epoch."""

    epoch: int
    net: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    rng: dict[str, torch.Tensor]
    best_net: dict[str, torch.Tensor]
    best_loss: torch.Tensor  # [K] each member's best held-out loss (cross-fitted: its config's)
    best_epoch: torch.Tensor  # [K]
    since: torch.Tensor  # [K] epochs since each member last improved
    ensemble_best: torch.Tensor  # the lowest held-out loss of the epochs' ensembles so far
    ensemble_since: torch.Tensor  # epochs since it last fell by min_improvement
    alive: torch.Tensor  # [K] bool: members whose loss stayed finite
    best_out: torch.Tensor  # [K, n_eval, outputs] each member's held-out outputs at its best epoch


# ---------------------------------------------------------------- outputs, losses, combination


def member_outputs(net: EnsembleNet, X: torch.Tensor) -> torch.Tensor:
    """[K, n, outputs] for all rows, in chunks so that large splits fit in memory."""
    return torch.cat([net(X[i:i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)], dim=1)


def row_losses(out: torch.Tensor, y: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    """[K, B] loss of every member on every row (cross-entropy or squared error on standardised targets)."""
    k, b = out.shape[:2]
    if task == "classification":
        if n_classes == 2:
            return F.binary_cross_entropy_with_logits(out[..., 0], y.to(out.dtype).expand(k, b), reduction="none")
        return F.cross_entropy(out.reshape(k * b, -1), y.repeat(k), reduction="none").view(k, b)
    return ((out - y) ** 2).mean(-1)


def member_probabilities(out: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[K, n, classes] from the members' logits."""
    if n_classes == 2:
        p1 = torch.sigmoid(out[..., 0])
        return torch.stack([1 - p1, p1], dim=-1)
    return torch.softmax(out, dim=-1)


def as_logits(probs: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Logits whose probabilities are `probs` [n, classes]: the shape every single network's metrics expect."""
    logp = probs.clamp_min(1e-12).log()
    return (logp[:, 1] - logp[:, 0]).unsqueeze(1) if n_classes == 2 else logp


def combine(out: torch.Tensor, weights: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    """The ensemble's answer from members' outputs [K, n, o] and weights [K] or [K, n] (rows a member may not
    answer have weight 0): averaged probabilities (as logits) for classes, averaged values otherwise."""
    w = weights if weights.dim() == 2 else weights[:, None].expand(out.shape[:2])
    w = w / w.sum(0, keepdim=True).clamp_min(1e-12)
    if task == "classification":
        probs = (member_probabilities(out, n_classes) * w[..., None]).sum(0)
        return as_logits(probs, n_classes)
    return (out * w[..., None]).sum(0)


def ensemble_outputs(net: EnsembleNet, X: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    """The kept ensemble's outputs for X, in the shape of a single network's (logits or values)."""
    return combine(member_outputs(net, X), net.member_weights, task, n_classes)


def spread(net: EnsembleNet, X: torch.Tensor, task: str, n_classes: int) -> dict[str, torch.Tensor]:
    """How much the members disagree on each row: the weighted standard deviation of their probability of the
    ensemble's class (or of their values, standardised units), and the weight of members voting otherwise."""
    out = member_outputs(net, X)
    w = (net.member_weights / net.member_weights.sum())[:, None]
    if task == "classification":
        probs = member_probabilities(out, n_classes)
        mean = (probs * w[..., None]).sum(0)
        chosen = mean.argmax(1)
        p = probs.gather(2, chosen.expand(len(probs), -1)[..., None])[..., 0]
        std = ((w * (p - (w * p).sum(0)) ** 2).sum(0)).sqrt()
        disagreement = (w * (probs.argmax(2) != chosen)).sum(0)
        return {"std": std, "disagreement": disagreement}
    mean = (out * w[..., None]).sum(0)
    return {"std": ((w[..., None] * (out - mean) ** 2).sum(0)).sqrt()}


# ---------------------------------------------------------------- selection


def select_configs(oof: torch.Tensor, y: torch.Tensor, task: str, n_classes: int, rounds: int,
                   row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy ensemble selection with replacement on held-out predictions `oof` [C, n, o] (probabilities or
    values): each round adds the config that most lowers the average's loss; the weights at the best round
    are returned (counts / rounds, [C])."""
    n_configs = oof.shape[0]
    total = torch.zeros_like(oof[0])
    counts = torch.zeros(n_configs, dtype=torch.float64, device=oof.device)
    best_counts, best_loss = counts.clone(), math.inf
    w = row_weight if row_weight is not None else torch.ones(oof.shape[1], dtype=oof.dtype, device=oof.device)
    for r in range(1, rounds + 1):
        candidates = (total[None] + oof) / r
        if task == "classification":
            p = candidates.gather(2, y.view(1, -1, 1).expand(n_configs, -1, 1))[..., 0]
            losses = (-(p.clamp_min(1e-15).log()) * w).sum(1) / w.sum()
        else:
            losses = (((candidates - y) ** 2).mean(-1) * w).sum(1) / w.sum()
        losses = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, math.inf))
        c = int(losses.argmin())
        counts[c] += 1
        total += oof[c]
        if float(losses[c]) < best_loss - 1e-12:
            best_loss, best_counts = float(losses[c]), counts.clone()
    return best_counts / best_counts.sum()


# ---------------------------------------------------------------- training


@dataclass
class _Pool:
    """Every row the ensemble may learn from, with which members train on and validate on which rows."""

    X: torch.Tensor
    Y: torch.Tensor
    row_weight: torch.Tensor  # [n] class weights of the rows (ones without class weights)
    train_mask: torch.Tensor  # [K, n] float
    trainable: torch.Tensor  # rows some member trains on
    eval_rows: torch.Tensor  # rows some member validates on
    val_mask: torch.Tensor  # [K, n_eval] float
    info: dict[str, Any] = field(default_factory=dict)


def _pool(data: TrainData, cfg: EnsembleConfig, plan: list[Member], task: Task, dev: torch.device) -> _Pool:
    X = torch.as_tensor(np.concatenate([data.X_train, data.X_val]), dtype=torch.float32, device=dev)
    y = np.concatenate([data.y_train, data.y_val]) if data.y_train is not None else None
    Y = task.targets(X, y)
    n, n_train = len(X), len(data.X_train)
    k = len(plan)
    if cfg.folds > 1:
        fold = assign_folds(n, cfg.folds, cfg.seed, y if data.task == "classification" else None)
        member_fold = torch.as_tensor([m.fold for m in plan], device=dev)
        held_out = torch.as_tensor(fold, device=dev)[None, :] == member_fold[:, None]
        trainable = eval_rows = torch.arange(n, device=dev)
        info = {"validation": "cross-fitted", "folds": cfg.folds}
    else:
        if n == n_train:
            raise TrainingError("the ensemble's members need validation rows when folds is 1; set "
                                "training.validation_fraction above 0 or use more folds")
        held_out = (torch.arange(n, device=dev) >= n_train)[None, :].expand(k, n)
        trainable, eval_rows = torch.arange(n_train, device=dev), torch.arange(n_train, n, device=dev)
        info = {"validation": "shared split", "folds": 1}
    weight = task.weight[Y] if task.weight is not None and data.task == "classification" else \
        torch.ones(n, device=dev)
    return _Pool(X=X, Y=Y, row_weight=weight, train_mask=(~held_out).float(), trainable=trainable,
                 eval_rows=eval_rows, val_mask=held_out[:, eval_rows].float(), info=info)


class _TrainHits:
    """Each member's right answers on the rows it trained on in one epoch, from the steps' own outputs: counted
    every FOLD_STEPS steps rather than in each step (a dozen small ops a step saved), holding at most that many
    steps' outputs."""

    def __init__(self, pool: _Pool, perm: torch.Tensor, members: int, n_classes: int) -> None:
        self.pool, self.perm, self.members, self.n_classes = pool, perm, members, n_classes
        self.correct = torch.zeros(members, dtype=torch.float64, device=perm.device)
        self.counted = torch.zeros(members, dtype=torch.float64, device=perm.device)
        self.outputs: list[torch.Tensor] = []  # [K, B, o] of the steps not counted yet
        self.done = 0  # rows of perm counted so far

    def add(self, out: torch.Tensor) -> None:
        """The next step's outputs (its rows are the next ones of perm)."""
        self.outputs.append(out)
        if len(self.outputs) == FOLD_STEPS:
            self._count()

    @torch.no_grad()
    def _count(self) -> None:
        out = torch.cat(self.outputs, dim=1)
        rows = self.perm[self.done:self.done + out.shape[1]]
        trained = (self.pool.train_mask[:, rows] * self.pool.row_weight[rows]) > 0
        right = M.predicted_classes(out.flatten(0, 1), self.n_classes).view(self.members, -1) == self.pool.Y[rows]
        self.correct += (right * trained).sum(1)
        self.counted += trained.sum(1)
        self.outputs.clear()
        self.done += out.shape[1]

    def accuracy(self) -> torch.Tensor:
        """[K] each member's accuracy on its training rows this epoch."""
        if self.outputs:
            self._count()
        return self.correct / self.counted.clamp_min(1)


def _config_loss(member_loss: torch.Tensor, member_rows: torch.Tensor, config_of: torch.Tensor,
                 configs: int) -> torch.Tensor:
    """[K] the loss of each member's config: its members' held-out losses weighted by their held-out rows
    (`member_rows` 0 for a member left out: a diverged one does not hold back the rest of its config).

    A member that kept its own best epoch on its own fold would pick, among many noisy epochs, the one that happens
    to suit those few rows, and its out-of-fold predictions would look better than the member is: on small data
    that optimism is larger for the MLPs than for the exactly fitted linear members, and selection then favours
    the wrong one. One epoch chosen per config from every row (as cross-validation chooses an epoch count) is a
    choice among the same epochs on four times the rows."""
    total = torch.zeros(configs, dtype=torch.float64, device=member_loss.device)
    rows = torch.zeros(configs, dtype=torch.float64, device=member_loss.device)
    total.index_add_(0, config_of, torch.where(member_rows > 0, member_loss * member_rows, 0.0))
    rows.index_add_(0, config_of, member_rows)
    return (total / rows)[config_of]


def _snapshot_rng(dev: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(dev)
    return states


def train_ensemble(data: TrainData, cfg: EnsembleConfig, device: str = "cpu", on_epoch: EpochHook | None = None,
                   resume: EnsembleState | None = None, history: list[dict[str, Any]] | None = None,
                   on_step: StepHook | None = None) -> TrainResult:
    """Train every member at once; keep each member's (cross-fitted: each config's) best epoch; select configs
    on held-out predictions. A long epoch's steps are reported to `on_step`."""
    # Adam's second moments of quiet weights sink into denormal floats, which the CPU handles dozens of times
    # slower (measured: a third of a small job's time in one sqrt); flushing them to zero changes nothing else.
    with flushed_denormals():
        return _train_ensemble(data, cfg, device, on_epoch, resume, history, on_step)


def _train_ensemble(data: TrainData, cfg: EnsembleConfig, device: str, on_epoch: EpochHook | None,
                    resume: EnsembleState | None, history: list[dict[str, Any]] | None,
                    on_step: StepHook | None) -> TrainResult:
    if data.task not in ("classification", "regression"):
        raise ValueError("the ensemble learns classification and regression targets")
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    plan = member_plan(cfg)
    net = EnsembleNet(data.X_train.shape[1], data.n_outputs, cfg.members, cfg.hidden_layers, cfg.activation,
                      cfg.linear_skip).to(dev)
    net.dropout.copy_(torch.as_tensor([m.dropout for m in plan]))
    params = list(net.parameters())
    optimizer = MemberAdamW(params, lr=torch.as_tensor([m.learning_rate for m in plan], device=dev),
                            weight_decay=torch.as_tensor([m.weight_decay for m in plan], device=dev))
    task = Task(data, dev)
    batched_step = BatchedStep(net, cfg.activation, data.task, data.n_classes)
    pool = _pool(data, cfg, plan, task, dev)
    Xe, Ye = pool.X[pool.eval_rows], pool.Y[pool.eval_rows]
    we = pool.row_weight[pool.eval_rows]
    val_weight = pool.val_mask * we
    k = cfg.members
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    best_loss = torch.full((k,), math.inf, dtype=torch.float64, device=dev)
    best_epoch = torch.zeros(k, dtype=torch.long, device=dev)
    since = torch.zeros(k, dtype=torch.long, device=dev)
    ensemble_best = torch.tensor(math.inf, dtype=torch.float64)
    ensemble_since = torch.tensor(0)
    alive = torch.ones(k, dtype=torch.bool, device=dev)
    best_params = [p.detach().clone() for p in params]
    best_out = torch.zeros(k, len(Xe), data.n_outputs, device=dev)
    result = TrainResult(net=net, history=list(history or []))
    first_epoch = 1
    if resume is not None:
        net.load_state_dict(resume.net)
        optimizer.load_state_dict(resume.optimizer)
        gen.set_state(resume.generator)
        torch.set_rng_state(resume.rng["cpu"])
        if dev.type == "cuda" and "cuda" in resume.rng:
            torch.cuda.set_rng_state(resume.rng["cuda"], dev)
        names = [name for name, _ in net.named_parameters()]
        for name, b in zip(names, best_params, strict=True):
            b.copy_(resume.best_net[name])
        best_loss.copy_(resume.best_loss)
        best_epoch.copy_(resume.best_epoch)
        since.copy_(resume.since)
        ensemble_best.copy_(resume.ensemble_best)
        ensemble_since.copy_(resume.ensemble_since)
        alive.copy_(resume.alive)
        best_out.copy_(resume.best_out)
        first_epoch = resume.epoch + 1
    # Cross-fitted members choose their epoch per config: the config's loss over every row, each row scored by the
    # member that held it out, so that one epoch is chosen for all of them on all the data (see _config_loss).
    config_of = torch.as_tensor([m.config for m in plan], device=dev) if cfg.folds > 1 else None
    val_rows = val_weight.sum(1).double()
    n_classes = data.n_classes
    classify = data.task == "classification"
    net.train()
    weighted = task.weight is not None and data.task == "classification"
    steps = math.ceil(len(pool.trainable) / cfg.batch_size)
    for epoch in range(first_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        clock = StepClock(on_step, epoch, steps)
        perm = pool.trainable[torch.randperm(len(pool.trainable), generator=gen, device=dev)]
        running = torch.zeros(k, dtype=torch.float64, device=dev)
        seen = torch.zeros(k, dtype=torch.float64, device=dev)
        hits = _TrainHits(pool, perm, k, n_classes) if classify else None
        for step, start in enumerate(range(0, len(perm), cfg.batch_size), 1):
            idx = perm[start:start + cfg.batch_size]
            # without class weights every row weighs 1: the mask alone (a product by 1 changes no bit)
            mask = pool.train_mask[:, idx] * pool.row_weight[idx] if weighted else pool.train_mask[:, idx]
            denom = mask.sum(1)
            per_member, out = batched_step(pool.X[idx], pool.Y[idx], mask, denom)
            if cfg.gradient_clip_norm:
                optimizer.clip_(cfg.gradient_clip_norm)
            optimizer.step()
            running += per_member.detach() * denom
            seen += denom
            if hits is not None:
                hits.add(out.detach())
            clock.tick(step, start + len(idx))
        net.eval()
        with torch.inference_mode():
            out = member_outputs(net, Xe)
            val_loss = ((row_losses(out, Ye, data.task, n_classes) * val_weight).sum(1)
                        / val_weight.sum(1).clamp_min(1e-12)).double()
            train_loss = running / seen.clamp_min(1e-12)
            diverged = alive & ~(torch.isfinite(val_loss) & torch.isfinite(train_loss))
            if bool(diverged.any()):
                alive &= ~diverged
                optimizer.lr[diverged] = 0.0  # a diverged member stays out of every later step and average
                for p in params:
                    p.data[diverged] = 0.0
            if not bool(alive.any()):
                raise TrainingError(f"loss became NaN at epoch {epoch} in every member: training diverged; lower "
                                    f"learning_rate_range (now {list(cfg.learning_rate_range)}) or check the data "
                                    "for extreme values")
            score = val_loss if config_of is None else _config_loss(val_loss, val_rows * alive, config_of, cfg.configs)
            improved = alive & (score < best_loss)
            progress = alive & (score < best_loss * (1 - cfg.min_improvement))
            best_loss = torch.where(improved, score, best_loss)
            best_epoch = torch.where(improved, epoch, best_epoch)
            since = torch.where(progress, 0, since + 1)
            best_out[improved] = out[improved]
            for p, b in zip(params, best_params, strict=True):
                b[improved] = p.detach()[improved]
            # The ensemble as it stands this epoch: each held-out row averaged over the live members that
            # held it out.
            current = combine(out, val_weight * alive[:, None], data.task, n_classes)
            covered = (pool.val_mask * alive[:, None]).sum(0) > 0
            figures = {"val_" + name: v for name, v in
                       task.metrics(current[covered], Ye[covered]).items()}
            figures["train_loss"] = train_loss[alive].mean()
            if hits is not None:
                # each member on the rows it trained on, in training mode, as the epoch's steps saw them
                figures["train_accuracy"] = hits.accuracy()[alive].mean()
            row: dict[str, Any] = as_floats(figures)
        loss_now = row["val_loss"] if row["val_loss"] is not None else math.inf
        if loss_now < float(ensemble_best) * (1 - cfg.min_improvement):
            ensemble_since.zero_()
        else:
            ensemble_since += 1
        ensemble_best = torch.tensor(min(float(ensemble_best), loss_now), dtype=torch.float64)
        net.train()
        row["members_alive"] = int(alive.sum())
        row["members_improved"] = int(improved.sum())
        row["member_val_loss"] = [float(v) if math.isfinite(v) else None for v in val_loss.tolist()]
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)

        # Built only if the caller checkpoints this epoch (the hook calls it synchronously, so the loop's
        # current tensors are the ones bound here).
        def snapshot(epoch: int = epoch, best_loss: torch.Tensor = best_loss, best_epoch: torch.Tensor = best_epoch,
                     since: torch.Tensor = since, ensemble_best: torch.Tensor = ensemble_best,
                     ensemble_since: torch.Tensor = ensemble_since, alive: torch.Tensor = alive) -> EnsembleState:
            names = [name for name, _ in net.named_parameters()]
            return EnsembleState(epoch=epoch, net=net.state_dict(), optimizer=optimizer.state_dict(),
                                 generator=gen.get_state(), rng=_snapshot_rng(dev),
                                 best_net=dict(zip(names, best_params, strict=True)), best_loss=best_loss,
                                 best_epoch=best_epoch, since=since, ensemble_best=ensemble_best,
                                 ensemble_since=ensemble_since.clone(), alive=alive, best_out=best_out)

        if on_epoch is not None:
            reason = on_epoch(EpochReport(epoch=epoch, metrics=row, history=result.history, snapshot=snapshot))
            if reason is not None:
                result.stopped_by = reason
                break
        # Stop when every member has stalled, or when the ensemble as a whole has: a slow member's last small
        # gains do not move the average (every member keeps the weights of its best epoch either way).
        patience = cfg.early_stopping_patience
        if patience and (bool((since[alive] >= patience).all()) or int(ensemble_since) >= patience):
            result.stopped_at = epoch
            break
    with torch.no_grad():
        for p, b in zip(params, best_params, strict=True):
            p.copy_(b)
    net.eval()
    if result.stopped_by is None:
        linear = _fit_linear(pool, cfg, plan, data) if cfg.linear_members and cfg.linear_skip else None
        _select(net, result, cfg, plan, pool, best_out, alive, best_epoch, task, linear)
    return result


def _fit_linear(pool: _Pool, cfg: EnsembleConfig, plan: list[Member], data: TrainData) -> LinearFit:
    """The linear models for selection: one per strength on each fold's training rows (or on the training split)."""
    folds = sorted({m.fold for m in plan if m.fold is not None})
    first = [next(m.index for m in plan if m.fold == f) for f in folds] if folds else [0]
    train_weight = pool.train_mask[first] * pool.row_weight[None, :]
    with torch.no_grad():
        return fit_linear(pool.X, pool.Y, train_weight, data.task, data.n_classes, cfg.seed)


def _select(net: EnsembleNet, result: TrainResult, cfg: EnsembleConfig, plan: list[Member], pool: _Pool,
            best_out: torch.Tensor, alive: torch.Tensor, best_epoch: torch.Tensor, task: Task,
            linear: LinearFit | None = None) -> None:
    """Choose configs on held-out predictions, keep their members, and record the kept ensemble's figures.
    `linear` models join as further members (one config per strength, a member per fold)."""
    data = task.data
    n_classes = data.n_classes
    Ye = pool.Y[pool.eval_rows]
    we = pool.row_weight[pool.eval_rows]
    val_mask = pool.val_mask
    members_trained = len(plan)
    if linear is not None:
        strengths = sorted(set(linear.l2))
        first_config = max(m.config for m in plan) + 1
        folds = sorted({m.fold for m in plan if m.fold is not None})
        lin_plan = [Member(index=len(plan) + j, config=first_config + strengths.index(l2),
                           fold=folds[f] if folds else None, learning_rate=0.0, weight_decay=0.0, dropout=0.0, l2=l2)
                    for j, (l2, f) in enumerate(zip(linear.l2, linear.fold_of, strict=True))]
        held = [next(m.index for m in plan if m.fold == lm.fold) for lm in lin_plan]
        with torch.inference_mode():
            lin_out = torch.einsum("nd,ldo->lno", pool.X[pool.eval_rows], linear.weight) + linear.bias[:, None, :]
        best_out = torch.cat([best_out, lin_out])
        val_mask = torch.cat([val_mask, val_mask[held]])
        alive = torch.cat([alive, torch.ones(len(lin_plan), dtype=torch.bool, device=alive.device)])
        best_epoch = torch.cat([best_epoch, torch.zeros(len(lin_plan), dtype=best_epoch.dtype,
                                                        device=best_epoch.device)])
        net.append_linear(linear.weight, linear.bias)
        plan = plan + lin_plan
    configs = sorted({m.config for m in plan})
    whole = [c for c in configs if all(bool(alive[m.index]) for m in plan if m.config == c)]
    dropped = [m.index for m in plan if not bool(alive[m.index])]
    values = member_probabilities(best_out, n_classes) if data.task == "classification" else best_out
    kept, member_weights = [], []
    if whole:
        oof = torch.stack([(values * val_mask[..., None])[[m.index for m in plan if m.config == c]].sum(0)
                           for c in whole])
        weights = select_configs(oof, Ye, data.task, n_classes, cfg.selection_rounds,
                                 we if task.weight is not None else None)
        for c, w in zip(whole, weights.tolist(), strict=True):
            members = [m for m in plan if m.config == c]
            if w > 0:
                kept += [m.index for m in members]
                member_weights += [w / len(members)] * len(members)
        config_weight = dict(zip(whole, weights.tolist(), strict=True))
    else:
        # Every setting lost a member: no setting has a prediction for every row, so nothing to select between;
        # the members left average equally.
        kept = [m.index for m in plan if bool(alive[m.index])]
        member_weights = [1.0 / len(kept)] * len(kept)
        config_weight = {}
    weight_of = torch.zeros(len(plan), device=val_mask.device)
    weight_of[kept] = torch.as_tensor(member_weights, device=weight_of.device)
    per_row = val_mask * weight_of[:, None]
    covered = per_row.sum(0) > 0
    final = combine(best_out, per_row, data.task, n_classes)[covered]
    with torch.inference_mode():
        figures = as_floats({"val_" + k: v for k, v in task.metrics(final, Ye[covered]).items()})
    net.keep(kept, member_weights)
    result.kept_metrics = figures
    result.held_out = (final, Ye[covered])
    result.info["ensemble"] = {
        "members": len(kept), "members_trained": members_trained, "linear_models": len(plan) - members_trained,
        "folds": cfg.folds,
        "validation": pool.info["validation"],
        "estimate": "out-of-fold" if cfg.folds > 1 else "validation split",
        "members_diverged": dropped,
        "kept": [{"member": m.index, "config": m.config, "fold": m.fold, "weight": round(w, 6),
                  **({"kind": "mlp", "learning_rate": m.learning_rate, "weight_decay": m.weight_decay,
                      "dropout": m.dropout, "best_epoch": int(best_epoch[m.index])} if m.l2 is None else
                     {"kind": "linear", "l2": m.l2})}
                 for m, w in ((plan[i], member_weights[j]) for j, i in enumerate(kept))],
        "config_weights": {str(c): round(w, 6) for c, w in config_weight.items() if w > 0},
    }
    if dropped:
        result.info["notes"] = [f"member(s) {dropped} diverged (loss became NaN) and were dropped"]
