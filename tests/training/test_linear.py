"""The ensemble's linear members: each reaches the optimum scikit-learn's solvers find for the same problem."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from service.training.linear import L2_STRENGTHS, fit_linear


def _scaled(X: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(StandardScaler().fit_transform(X), dtype=torch.float32)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_ridge_equals_scikit_learns_on_each_folds_rows(l2: float) -> None:
    X_np, y_np = load_diabetes(return_X_y=True)
    X = _scaled(X_np)
    y = (y_np - y_np.mean()) / y_np.std()
    Y = torch.as_tensor(y, dtype=torch.float32)[:, None]
    n = len(X)
    fold = np.arange(n) % 3
    train = torch.as_tensor(np.stack([fold != f for f in range(3)]), dtype=torch.float32)
    fit = fit_linear(X, Y, train, "regression", 0, seed=0, strengths=(l2,))
    assert fit.weight.shape == (3, X.shape[1], 1) and fit.fold_of == [0, 1, 2] and fit.l2 == [l2] * 3
    for f in range(3):
        rows = fold != f
        # ours: mean squared error + l2 * ||W||² (the rows' count times l2 in scikit-learn's summed form)
        ref = Ridge(alpha=l2 * rows.sum()).fit(X.numpy()[rows].astype(np.float64), y[rows])
        np.testing.assert_allclose(fit.weight[f, :, 0].numpy(), ref.coef_, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(fit.bias[f, 0]), ref.intercept_, atol=1e-5)


def test_ridge_weights_rows() -> None:
    """A row weight of 2 is the row twice."""
    X_np, y_np = load_diabetes(return_X_y=True)
    X, y = _scaled(X_np)[:100], torch.as_tensor((y_np[:100] - 150) / 80, dtype=torch.float32)[:, None]
    w = torch.ones(1, 100)
    w[0, :30] = 2
    twice = fit_linear(X, y, w, "regression", 0, seed=0, strengths=(1e-2,))
    Xd, yd = torch.cat([X, X[:30]]), torch.cat([y, y[:30]])
    copied = fit_linear(Xd, yd, torch.ones(1, 130), "regression", 0, seed=0, strengths=(1e-2,))
    torch.testing.assert_close(twice.weight, copied.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
@pytest.mark.parametrize("loader,classes", [(load_breast_cancer, 2), (load_iris, 3)])
def test_logistic_equals_scikit_learns_lbfgs_optimum(loader, classes: int, method: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from service.training import linear

    # small problems take Newton's method, large ones L-BFGS: both reach the same optimum
    monkeypatch.setattr(linear, "NEWTON_FLOPS", float("inf") if method == "newton" else 0.0)
    X_np, y_np = loader(return_X_y=True)
    X = _scaled(X_np)
    y = torch.as_tensor(y_np)
    n = len(X)
    fold = np.arange(n) % 2
    train = torch.as_tensor(np.stack([fold != f for f in range(2)]), dtype=torch.float32)
    strengths = (1e-2, 1e-1)
    fit = fit_linear(X, y, train, "classification", classes, seed=0, strengths=strengths)
    assert fit.weight.shape == (4, X.shape[1], 1 if classes == 2 else classes)
    for j, (l2, f) in enumerate(zip(fit.l2, fit.fold_of, strict=True)):
        rows = fold != f
        # mean cross-entropy + l2/2 ||W||² is scikit-learn's C = 1 / (l2 · rows)
        ref = LogisticRegression(C=1.0 / (l2 * rows.sum()), tol=1e-10, max_iter=10_000).fit(
            X.numpy()[rows].astype(np.float64), y_np[rows])
        ours = torch.einsum("nd,do->no", X[~torch.as_tensor(rows)], fit.weight[j]) + fit.bias[j]
        theirs = ref.predict_proba(X.numpy()[~rows].astype(np.float64))
        probs = torch.sigmoid(ours[:, 0]) if classes == 2 else torch.softmax(ours, 1)
        if classes == 2:
            np.testing.assert_allclose(probs.numpy(), theirs[:, 1], atol=2e-4)
        else:
            np.testing.assert_allclose(probs.numpy(), theirs, atol=2e-4)


def test_default_strengths_give_one_model_per_fold_and_strength() -> None:
    X = torch.randn(60, 4)
    y = (X[:, 0] > 0).long()
    fit = fit_linear(X, y, torch.ones(3, 60), "classification", 2, seed=0)
    assert len(fit.l2) == 3 * len(L2_STRENGTHS)
    assert fit.fold_of == [f for f in range(3) for _ in L2_STRENGTHS]
    # stronger penalty, smaller weights
    norms = fit.weight[: len(L2_STRENGTHS)].flatten(1).norm(dim=1)
    assert bool((norms[1:] < norms[:-1]).all())


def test_rows_beyond_the_cap_are_a_seeded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.training import linear

    monkeypatch.setattr(linear, "MAX_ROWS", 50)
    X = torch.randn(200, 3)
    Y = (X @ torch.tensor([[1.0], [-2.0], [0.5]])) + 0.1 * torch.randn(200, 1)
    a = linear.fit_linear(X, Y, torch.ones(1, 200), "regression", 0, seed=1, strengths=(1e-3,))
    b = linear.fit_linear(X, Y, torch.ones(1, 200), "regression", 0, seed=1, strengths=(1e-3,))
    c = linear.fit_linear(X, Y, torch.ones(1, 200), "regression", 0, seed=2, strengths=(1e-3,))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert not torch.equal(a.weight, c.weight)
    np.testing.assert_allclose(a.weight[0, :, 0].numpy(), [1.0, -2.0, 0.5], atol=0.1)
