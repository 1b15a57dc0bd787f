"""L2-regularised linear models fit exactly, for the ensemble to choose from beside its MLP members.

Many small tables (biomedical, economic) are close to linear: there a well-regularised linear model is the best
thing to predict with, and an MLP trained by minibatches, even one with a linear skip path, is a noisier copy of
it. So the ensemble also fits, on the same prepared inputs (standardised values, piecewise-linear bins, one-hot
categories, missing-value indicators), one linear model per (L2 strength, fold): ridge regression in closed form
for regression (the normal equations in float64), multinomial / binary logistic regression by full-batch L-BFGS
for classification. Each is fit on the rows its fold trains on and scored on the rows it holds out, exactly like an
MLP member, so that greedy selection compares them on equal terms and may keep either, or a blend of both.

The strengths are per row of the training data: the penalty is `l2 / 2 * ||W||²` beside the mean cross-entropy or
half the mean squared error (the bias is not penalised), so scikit-learn's `LogisticRegression(C=1)` and
`Ridge(alpha=1)` on n rows are both `l2 = 1 / n`. Row weights (class weights) weigh each row's loss.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch.nn import functional as F

# Per-row L2 strengths: one config each, from almost none to strong.
L2_STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# A linear model needs far fewer rows than an MLP to be well determined: beyond this many training rows a
# seeded sample is used (large data validates on one shared split, so this is one fit per strength).
MAX_ROWS = 20_000
LBFGS_ITERATIONS = 50  # per strength, each run starting from the stronger one's optimum
# Newton's method (exact Hessians) when one step costs at most this many multiply-adds (about 10 ms), L-BFGS
# beyond: a Newton step is exact but its cost grows with the square (Hessian) and cube (solve) of the inputs.
NEWTON_FLOPS = 3e8
NEWTON_STEPS = 50


@dataclass(frozen=True)
class LinearFit:
    """One linear model per (fold, strength): weight [L, inputs, outputs], bias [L, outputs]; member j has
    strength `l2[j]` and trains on the rows of fold mask `fold_of[j]`."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: list[float]
    fold_of: list[int]


def fit_linear(X: torch.Tensor, Y: torch.Tensor, train_weight: torch.Tensor, task: str, n_classes: int,
               seed: int, strengths: tuple[float, ...] = L2_STRENGTHS) -> LinearFit:
    """Fit len(strengths) models for each row of `train_weight` [F, n] (each row's weights on the n rows: 0 for
    rows that set does not train on, class weights otherwise). Regression targets Y [n, o] are the standardised
    ones the members learn; classification Y [n] holds class indices."""
    folds, n = train_weight.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for f in range(folds):
        candidates = torch.nonzero(train_weight[f] > 0).flatten()
        if len(candidates) > MAX_ROWS:
            pick = torch.randperm(len(candidates), generator=gen)[:MAX_ROWS].to(candidates.device)
            candidates = candidates[pick.sort().values]
        rows.append(candidates)
    if task == "classification":
        weight, bias = _logistic(X, Y, train_weight, rows, n_classes, strengths)
    else:
        weight, bias = _ridge(X, Y, train_weight, rows, strengths)
    l2 = [s for _ in range(folds) for s in strengths]
    fold_of = [f for f in range(folds) for _ in strengths]
    return LinearFit(weight=weight.to(X.dtype), bias=bias.to(X.dtype), l2=l2, fold_of=fold_of)


def _ridge(X: torch.Tensor, Y: torch.Tensor, train_weight: torch.Tensor, rows: list[torch.Tensor],
           strengths: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    weights, biases = [], []
    d = X.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=X.device)
    for f, idx in enumerate(rows):
        x, y = X[idx].double(), Y[idx].double()
        w = train_weight[f, idx].double()
        total = w.sum()
        mx, my = (w @ x) / total, (w @ y) / total
        xc, yc = x - mx, y - my
        gram = xc.T @ (xc * w[:, None])
        cross = xc.T @ (yc * w[:, None])
        for s in strengths:
            # the penalty scales with the rows so that a strength means the same on every size of data
            W = _solve(gram + (s * total) * eye, cross)
            weights.append(W)
            biases.append(my - mx @ W)
    return torch.stack(weights), torch.stack(biases)


def _solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A⁻¹B for symmetric positive definite A ([..., n, n]) by Cholesky; where a factorisation fails (a matrix
    singular in floating point) a growing multiple of its mean diagonal is added until it succeeds. (Cholesky
    rather than torch.linalg.solve: the batched LU solve of torch 2.13's CPU build fails on matrices of a few
    hundred rows with more than one thread.)"""
    jitter = A.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12) * 1e-10
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(A)
        bad = info != 0
        if not bool(bad.any()):
            return torch.cholesky_solve(B, L)
        A = torch.where(bad[..., None, None], A + jitter[..., None, None] * eye, A)
        jitter = jitter * 10
    raise ValueError("a linear member's normal equations could not be solved")


def _logistic(X: torch.Tensor, Y: torch.Tensor, train_weight: torch.Tensor, rows: list[torch.Tensor],
              n_classes: int, strengths: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method where the Hessians are small enough (a handful of exact steps, all models at once),
    L-BFGS otherwise. Returns fold-major models, the strengths in the order given."""
    outputs = 1 if n_classes == 2 else n_classes
    folds = len(rows)
    # the same rows for every fold (weights 0 where a fold does not train) keep the problems one batched matmul
    idx = torch.unique(torch.cat(rows))
    x = X[idx].double()
    y = Y[idx]
    w_rows = torch.zeros(folds, len(idx), dtype=torch.float64, device=X.device)
    for f, r in enumerate(rows):
        w_rows[f] = torch.where(torch.isin(idx, r), train_weight[f, idx].double(), 0.0)
    w_rows = w_rows / w_rows.sum(1, keepdim=True)
    size = (x.shape[1] + 1) * outputs
    # one Newton step: the Hessians (m · size² each) and their Cholesky factors (size³ / 3 each)
    if folds * len(strengths) * (len(idx) * size * size + size ** 3 / 3) <= NEWTON_FLOPS:
        lam = torch.as_tensor(strengths, dtype=torch.float64, device=X.device).repeat(folds)
        return _newton(x, y, w_rows.repeat_interleave(len(strengths), dim=0), lam, outputs)
    found = _lbfgs(x, y, w_rows, outputs, strengths)
    weight = torch.stack([found[s][0][f] for f in range(folds) for s in strengths])
    bias = torch.stack([found[s][1][f] for f in range(folds) for s in strengths])
    return weight, bias


def _penalised_loss(x: torch.Tensor, y: torch.Tensor, w_rows: torch.Tensor, lam: torch.Tensor, W: torch.Tensor,
                    b: torch.Tensor, outputs: int) -> torch.Tensor:
    """[k] each model's weighted mean cross-entropy plus lam/2 ||W||²."""
    k = W.shape[0]
    logits = torch.einsum("md,kdo->kmo", x, W) + b[:, None, :]
    if outputs == 1:
        losses = F.binary_cross_entropy_with_logits(logits[..., 0], y.double().expand(k, -1), reduction="none")
    else:
        losses = F.cross_entropy(logits.reshape(-1, outputs), y.repeat(k), reduction="none").view(k, -1)
    return (losses * w_rows).sum(1) + 0.5 * lam * (W ** 2).sum((1, 2))


def _newton(x: torch.Tensor, y: torch.Tensor, w_rows: torch.Tensor, lam: torch.Tensor,
            outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton steps on k separate problems at once (weights w_rows [k, m], strengths lam [k]): each step
    solves the exact Hessian, halving it until that problem's objective falls; stops when no gradient is left."""
    k, m = w_rows.shape
    d = x.shape[1]
    xa = torch.cat([x, torch.ones(m, 1, dtype=x.dtype, device=x.device)], 1)  # the bias as a last input
    D = d + 1
    onehot = F.one_hot(y, outputs).double() if outputs > 1 else y.double()[:, None]
    # the penalty on weights, not the bias (a tiny ridge keeps the softmax's free shift of its biases solvable)
    pen = torch.cat([lam[:, None].expand(k, d), torch.full((k, 1), 1e-10, dtype=x.dtype, device=x.device)], 1)
    pen = pen[:, :, None].expand(k, D, outputs).reshape(k, D * outputs)
    theta = torch.zeros(k, D, outputs, dtype=x.dtype, device=x.device)

    def loss_of(t: torch.Tensor) -> torch.Tensor:
        return _penalised_loss(x, y, w_rows, lam, t[:, :d], t[:, d], outputs)

    current = loss_of(theta)
    for _ in range(NEWTON_STEPS):
        z = torch.einsum("md,kdo->kmo", xa, theta)
        if outputs == 1:
            p = torch.sigmoid(z)
            curv = (w_rows * (p * (1 - p))[..., 0])[..., None, None]  # [k, m, 1, 1]
        else:
            p = torch.softmax(z, -1)
            curv = w_rows[..., None, None] * (torch.diag_embed(p) - p[..., :, None] * p[..., None, :])
        grad = torch.einsum("md,kmo->kdo", xa, w_rows[..., None] * (p - onehot)).reshape(k, -1)
        grad = grad + pen * theta.reshape(k, -1)
        if float(grad.abs().max()) < 1e-9:
            break
        # H[(u,a),(v,b)] = Σ_i x_iu x_iv curv_i[a,b] + pen, one batched product per pair of outputs
        hess = torch.empty(k, D, outputs, D, outputs, dtype=x.dtype, device=x.device)
        for a in range(outputs):
            for b in range(a, outputs):
                block = torch.matmul((xa * curv[:, :, a, b, None]).transpose(1, 2), xa)
                hess[:, :, a, :, b] = block
                hess[:, :, b, :, a] = block
        hess = hess.view(k, D * outputs, D * outputs) + torch.diag_embed(pen)
        step = _solve(hess, grad[..., None])[..., 0].view(k, D, outputs)
        t = torch.ones(k, dtype=x.dtype, device=x.device)
        for _ in range(30):
            trial = loss_of(theta - t[:, None, None] * step)
            worse = ~(trial <= current)
            if not bool(worse.any()):
                break
            t = torch.where(worse, t / 2, t)
        trial = loss_of(theta - t[:, None, None] * step)
        ok = trial <= current
        theta = torch.where(ok[:, None, None], theta - t[:, None, None] * step, theta)
        current = torch.where(ok, trial, current)
    return theta[:, :d], theta[:, d]


def _lbfgs(x: torch.Tensor, y: torch.Tensor, w_rows: torch.Tensor, outputs: int,
           strengths: tuple[float, ...]) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """One L-BFGS run per strength, from the strongest to the weakest, each starting where the previous one ended
    (a weaker penalty's optimum is near a stronger one's, and the strong ones converge in a few steps). Within a
    run every fold's model is fit at once: their objectives are separate, so the sum of them is minimised by each
    one's own optimum, and the folds' problems are alike enough to converge together."""
    folds, d = w_rows.shape[0], x.shape[1]
    W = torch.zeros(folds, d, outputs, dtype=torch.float64, device=x.device)
    b = torch.zeros(folds, outputs, dtype=torch.float64, device=x.device)
    found: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in sorted(strengths, reverse=True):
        W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [W, b], lr=1.0, max_iter=LBFGS_ITERATIONS, history_size=20, tolerance_grad=1e-7, tolerance_change=1e-12,
            line_search_fn="strong_wolfe")
        lam = torch.full((folds,), s, dtype=torch.float64, device=x.device)

        def objective(W: torch.Tensor = W, b: torch.Tensor = b, lam: torch.Tensor = lam,
                      opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = _penalised_loss(x, y, w_rows, lam, W, b, outputs).sum()
            torch.autograd.backward(loss)  # = loss.backward(), which torch leaves unannotated
            return loss

        with torch.enable_grad():
            # LBFGS takes the loss tensor from its closure; Optimizer.step's annotation says float.
            opt.step(cast(Callable[[], float], objective))
        W, b = W.detach(), b.detach()
        found[s] = (W, b)
    return found
