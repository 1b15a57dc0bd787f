"""The batched ensemble against independent computations: K separate networks, brute force, chance."""

import math

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch
from torch import nn

from service.training.artifact import ModelMeta, load_checkpoint, load_model, save_checkpoint, save_model
from service.training.ensemble import (
    EnsembleConfig,
    EnsembleState,
    MemberAdamW,
    assign_folds,
    ensemble_outputs,
    member_plan,
    row_losses,
    select_configs,
    spread,
    train_ensemble,
)
from service.training.loop import TrainData
from service.training.nets import EnsembleNet
from service.training.pipeline import SplitSpec, predict_inputs, prepare
from tests.helpers import dataset_path


def iris_prepared():
    table = pacsv.read_csv(dataset_path("iris.csv"))
    features = [c for c in table.column_names if c != "species"]
    return prepare(table, targets=["species"], features=features, kinds={f: "numeric" for f in features},
                   task="classification", split=SplitSpec(validation_fraction=0.0, test_fraction=0.2, seed=0))


class Reference(nn.Module):
    """One member as a plain network: nn.Linear layers and the linear skip path."""

    def __init__(self, net: EnsembleNet, k: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layer.member(k) for layer in net.layers)
        self.skip = net.skip.member(k)

    def forward(self, x):
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h + self.skip(x)


def test_batched_members_step_exactly_like_separate_networks_with_their_own_hyperparameters():
    torch.manual_seed(0)
    k, n_in, n_out = 3, 5, 2
    net = EnsembleNet(n_in, n_out, k, (8, 6), "relu", linear_skip=True)
    with torch.no_grad():  # a non-zero skip path, so that its gradients are checked too
        net.skip.weight.normal_()
    refs = [Reference(net, m) for m in range(k)]
    lrs, wds = [1e-3, 1e-2, 3e-2], [0.0, 1e-2, 1e-1]
    batched = MemberAdamW(list(net.parameters()), lr=torch.tensor(lrs), weight_decay=torch.tensor(wds))
    separate = [torch.optim.AdamW(r.parameters(), lr=lr, weight_decay=wd, foreach=False)
                for r, lr, wd in zip(refs, lrs, wds, strict=True)]
    X = torch.randn(40, n_in)
    y = torch.randint(0, 2, (40,))
    for step in range(6):
        idx = torch.arange(step * 6, step * 6 + 10) % 40
        batched.zero_grad()
        row_losses(net(X[idx]), y[idx], "classification", 3).mean(1).sum().backward()
        batched.step()
        for r, opt in zip(refs, separate, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(r(X[idx]), y[idx]).backward()
            opt.step()
    for m, r in enumerate(refs):
        for layer, ref in zip([*net.layers, net.skip], [*r.layers, r.skip], strict=True):
            assert torch.allclose(layer.weight[m].T, ref.weight, atol=1e-6)
            assert torch.allclose(layer.bias[m, 0], ref.bias, atol=1e-6)
    # the members really moved by different amounts
    moved = [(net.layers[0].weight[m] - Reference(EnsembleNet(n_in, n_out, k, (8, 6)), m).layers[0].weight.T)
             for m in range(k)]
    assert len({round(float(d.detach().abs().mean()), 4) for d in moved}) == k


def test_each_config_draws_its_own_hyperparameters_from_even_strata_of_the_ranges():
    cfg = EnsembleConfig(members=16, folds=4, learning_rate_range=(1e-3, 1e-2), weight_decay_range=(1e-5, 1e-2),
                         dropout_range=(0.0, 0.3), seed=7)
    plan = member_plan(cfg)
    by_config = {}
    for m in plan:
        by_config.setdefault(m.config, set()).add((m.learning_rate, m.weight_decay, m.dropout))
    assert all(len(v) == 1 for v in by_config.values())  # the folds of a config share its settings
    settings = [next(iter(v)) for v in by_config.values()]
    strata = sorted(int(4 * (math.log(lr) - math.log(1e-3)) / (math.log(1e-2) - math.log(1e-3)))
                    for lr, _, _ in settings)
    assert strata == [0, 1, 2, 3]  # one learning rate from each quarter of the log range
    assert all(1e-5 <= wd <= 1e-2 and 0 <= d <= 0.3 for _, wd, d in settings)
    assert sorted(m.fold for m in plan if m.config == 0) == [0, 1, 2, 3]
    assert member_plan(cfg) == plan and member_plan(EnsembleConfig(seed=8)) != plan


def test_folds_are_balanced_and_stratified():
    y = np.array([0] * 30 + [1] * 10)
    fold = assign_folds(40, 4, seed=0, strata=y)
    assert np.bincount(fold).tolist() == [10, 10, 10, 10]
    assert sorted(np.bincount(fold[y == 1], minlength=4).tolist()) == [2, 2, 3, 3]
    assert not np.array_equal(fold, assign_folds(40, 4, seed=1, strata=y))


def test_out_of_fold_figures_are_honest_on_labels_that_cannot_be_learned():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 6)).astype(np.float32)
    y = rng.integers(0, 2, 240)
    data = TrainData(task="classification", X_train=X, y_train=y, X_val=X[:0], y_val=y[:0], n_classes=2)
    result = train_ensemble(data, EnsembleConfig(members=8, folds=4, hidden_layers=(256,), epochs=60,
                                                 early_stopping_patience=60, dropout_range=(0.0, 0.0),
                                                 weight_decay_range=(0.0, 0.0), learning_rate_range=(1e-2, 1e-2),
                                                 batch_size=32))
    train_accuracy = max(row["train_accuracy"] for row in result.history)
    assert train_accuracy > 0.8  # the members memorise their training rows...
    assert abs(result.kept_metrics["val_accuracy"] - 0.5) < 0.1  # ...and the held-out estimate is not fooled


def test_greedy_selection_matches_brute_force_on_small_libraries():
    torch.manual_seed(0)
    n = 60
    y = torch.randint(0, 3, (n,))
    # three noisy experts, each right on a different third of the rows, and one that is always unsure
    oof = torch.full((4, n, 3), 0.2)
    for c in range(3):
        rows = torch.arange(n) % 3 == c
        oof[c, rows] = 0.05
        oof[c, rows, y[rows]] = 0.9
        oof[c, ~rows] = torch.softmax(torch.randn(int((~rows).sum()), 3), 1)
    oof[3] = 1 / 3
    weights = select_configs(oof, y, "classification", 3, rounds=30)

    def loss(w):
        p = (w[:, None, None] * oof).sum(0)
        return float(-(p[torch.arange(n), y]).log().mean())

    grid = [torch.tensor([a, b, c, d], dtype=torch.float32) / 6 for a in range(7) for b in range(7)
            for c in range(7) for d in range(7) if a + b + c + d == 6]
    assert loss(weights.float()) <= min(loss(w) for w in grid) + 0.02
    assert (weights[:3] > 0).all()  # every expert contributes


def _train_small(**overrides):
    prepared = iris_prepared()
    cfg = EnsembleConfig(**{"members": 8, "folds": 4, "hidden_layers": (16,), "epochs": 12,
                            "early_stopping_patience": 5, "batch_size": 32, **overrides})
    return prepared, cfg


def test_resuming_mid_ensemble_continues_bit_for_bit(tmp_path):
    prepared, cfg = _train_small()
    whole = train_ensemble(prepared.data, cfg)

    def stop_at_5(report):
        if report.epoch == 5:
            save_checkpoint(tmp_path, "ck", report.snapshot(), {"history": report.history})
            return "cancelled"
        return None

    assert train_ensemble(prepared.data, cfg, on_epoch=stop_at_5).cancelled
    fields, extra = load_checkpoint(tmp_path, "ck")
    resumed = train_ensemble(prepared.data, cfg, resume=EnsembleState(**fields), history=extra["history"])

    def strip(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert strip(resumed.history) == strip(whole.history)
    assert resumed.info["ensemble"] == whole.info["ensemble"]
    for a, b in zip(resumed.net.state_dict().values(), whole.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_cross_fitted_members_of_a_config_keep_the_epoch_of_the_configs_lowest_out_of_fold_loss():
    """Not each member's own best epoch on its own fold (optimistic on few rows): the epoch whose held-out losses,
    weighted by each member's held-out rows, are lowest for the config as a whole, recomputed from the history."""
    prepared, cfg = _train_small(linear_members=False, epochs=60, early_stopping_patience=0,
                                 learning_rate_range=(0.02, 0.1))
    result = train_ensemble(prepared.data, cfg)
    plan = member_plan(cfg)
    n = len(prepared.data.X_train) + len(prepared.data.X_val)
    fold = assign_folds(n, cfg.folds, cfg.seed, np.concatenate([prepared.data.y_train, prepared.data.y_val]))
    rows = np.array([(fold == m.fold).sum() for m in plan], dtype=float)
    losses = np.array([row["member_val_loss"] for row in result.history])  # [epochs, K]
    best = {m["member"]: m["best_epoch"] for m in result.info["ensemble"]["kept"]}
    assert best, "nothing kept"
    own_best_differs = False
    for c in {plan[i].config for i in best}:
        members = [m.index for m in plan if m.config == c]
        config_loss = (losses[:, members] * rows[members]).sum(1) / rows[members].sum()
        assert {best[i] for i in members} == {int(np.argmin(config_loss)) + 1}
        own_best_differs |= any(int(np.argmin(losses[:, i])) + 1 != best[i] for i in members)
    assert own_best_differs, "every member's own best epoch is its config's: the rule is not exercised"


def test_a_diverged_member_is_dropped_with_a_note_not_failing_the_job():
    prepared, cfg = _train_small()

    def poison(report):
        if report.epoch == 2:
            with torch.no_grad():
                report.snapshot().net["layers.0.weight"][3] = float("nan")  # member 3's live weights
        return None

    result = train_ensemble(prepared.data, cfg, on_epoch=poison)
    info = result.info["ensemble"]
    assert info["members_diverged"] == [3] and "diverged" in result.info["notes"][0]
    assert all(m["config"] != 3 // cfg.folds for m in info["kept"])
    assert torch.isfinite(result.net.layers[0].weight).all()


def test_predict_averages_member_probabilities_with_their_weights_and_reports_their_spread(tmp_path):
    prepared, cfg = _train_small()
    result = train_ensemble(prepared.data, cfg)
    net = result.net
    X = torch.as_tensor(prepared.X_test)
    with torch.inference_mode():
        logits = ensemble_outputs(net, X, "classification", 3)
        members = torch.softmax(net(X), dim=-1)
    expected = (net.member_weights[:, None, None] * members).sum(0) / net.member_weights.sum()
    assert torch.allclose(torch.softmax(logits, 1), expected, atol=1e-6)
    assert math.isclose(float(net.member_weights.sum()), 1.0, rel_tol=1e-6)
    with torch.inference_mode():
        s = spread(net, X, "classification", 3)
    # the members' weighted spread of their probability of the ensemble's class, and the weight voting otherwise
    w = (net.member_weights / net.member_weights.sum()).numpy()
    p = members.numpy()
    chosen = np.average(p, axis=0, weights=w).argmax(1)
    p_chosen = p[:, np.arange(len(chosen)), chosen]
    mean = np.average(p_chosen, axis=0, weights=w)
    assert np.allclose(s["std"].numpy(), np.sqrt(np.average((p_chosen - mean) ** 2, axis=0, weights=w)), atol=1e-5)
    assert np.allclose(s["disagreement"].numpy(), ((p.argmax(2) != chosen) * w[:, None]).sum(0), atol=1e-5)
    assert float(s["std"].max()) > 0
    with torch.inference_mode():
        for layer in net.layers:  # every member a copy of the first: no disagreement left
            layer.weight[:] = layer.weight[0]
            layer.bias[:] = layer.bias[0]
        net.skip.weight[:] = net.skip.weight[0]
        net.skip.bias[:] = net.skip.bias[0]
        s = spread(net, X, "classification", 3)
    assert float(s["std"].max()) < 1e-6 and float(s["disagreement"].max()) == 0.0


def test_an_ensemble_round_trips_through_one_safetensors_file(tmp_path):
    prepared, cfg = _train_small()
    result = train_ensemble(prepared.data, cfg)
    meta = ModelMeta(spec={"model": {"type": "ensemble", "hidden_layers": [16], "activation": "relu",
                                     "members": cfg.members, "linear_skip": True}},
                     task="classification", n_inputs=4, n_outputs=3, preprocessing=prepared.preprocessing,
                     target=prepared.target, ensemble=result.info["ensemble"])
    save_model(tmp_path / "m", result.net, meta)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]
    net, loaded = load_model(tmp_path / "m")
    a = predict_inputs(result.net, meta, prepared.X_test, uncertainty=True)
    b = predict_inputs(net, loaded, prepared.X_test, uncertainty=True)
    assert a == b and len(b["uncertainty"]) == len(prepared.X_test)
    assert net.members == result.info["ensemble"]["members"] <= cfg.members + result.info["ensemble"]["linear_models"]


def test_the_ensemble_scores_iris_like_a_careful_baseline():
    from sklearn.linear_model import LogisticRegression

    prepared, _ = _train_small()
    result = train_ensemble(prepared.data, EnsembleConfig(members=16, folds=4, batch_size=32))
    with torch.inference_mode():
        ours = ensemble_outputs(result.net, torch.as_tensor(prepared.X_test), "classification", 3).argmax(1)
    accuracy = float((ours.numpy() == prepared.y_test).mean())
    baseline = LogisticRegression(max_iter=1000).fit(prepared.data.X_train, prepared.data.y_train)
    assert accuracy >= baseline.score(prepared.X_test, prepared.y_test) - 0.034  # at most one of 30 rows worse


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_the_ensemble_trains_on_cuda_like_on_cpu():
    prepared, cfg = _train_small()
    cpu = train_ensemble(prepared.data, cfg)
    gpu = train_ensemble(prepared.data, cfg, device="cuda")
    assert abs(cpu.kept_metrics["val_loss"] - gpu.kept_metrics["val_loss"]) < 0.05


def test_when_every_setting_loses_a_member_the_survivors_average_equally():
    prepared, cfg = _train_small(linear_members=False)  # linear models never diverge: none here

    def poison(report):
        if report.epoch == 2:
            with torch.no_grad():
                for member in (0, 5):  # one member of each of the two settings
                    report.snapshot().net["layers.0.weight"][member] = float("nan")
        return None

    result = train_ensemble(prepared.data, cfg, on_epoch=poison)
    info = result.info["ensemble"]
    assert info["members_diverged"] == [0, 5] and info["members"] == 6
    assert {m["weight"] for m in info["kept"]} == {round(1 / 6, 6)}
    assert result.kept_metrics["val_accuracy"] > 0.8


def test_gradient_clipping_bounds_each_members_own_norm():
    torch.manual_seed(0)
    net = EnsembleNet(3, 1, 2, (4,), "relu")
    optimizer = MemberAdamW(list(net.parameters()), lr=torch.tensor([1e-3, 1e-3]), weight_decay=torch.zeros(2))
    X = torch.randn(16, 3)
    scale = torch.tensor([1.0, 1000.0]).view(2, 1, 1)  # member 1's loss is a thousand times steeper
    (net(X) * scale).pow(2).mean(dim=(1, 2)).sum().backward()

    def norms():
        return torch.stack([sum(p.grad[k].pow(2).sum() for p in net.parameters()).sqrt() for k in range(2)])

    before = norms()
    optimizer.clip_(1.0)
    after = norms()
    assert after[1] == pytest.approx(1.0, rel=1e-4) and before[1] > 10
    assert after[0] == pytest.approx(float(min(before[0], 1.0)), rel=1e-4)  # the other member is left alone


def test_the_ensemble_reports_a_long_epochs_steps_without_changing_its_training(monkeypatch):
    from service.training import loop

    prepared, cfg = _train_small()
    quiet = train_ensemble(prepared.data, cfg)
    monkeypatch.setattr(loop, "STEP_REPORT_S", 0.0)
    reports = []
    loud = train_ensemble(prepared.data, cfg, on_step=reports.append)
    steps = math.ceil((len(prepared.data.X_train) + len(prepared.data.X_val)) / cfg.batch_size)
    assert [(r.epoch, r.step) for r in reports] == [(e, s) for e in range(1, len(loud.history) + 1)
                                                    for s in range(1, steps + 1)]
    assert all(r.steps == steps and r.samples_per_second > 0 for r in reports)
    for a, b in zip(loud.net.state_dict().values(), quiet.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _near_linear(n: int = 240, seed: int = 0):
    """A small regression whose truth is linear: a case where a ridge fit beats any MLP trained by minibatches."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    y = (X @ np.array([1.0, -0.5, 0.25, 0.0, 0.0, 0.8]) + rng.normal(scale=1.0, size=n)).astype(np.float32)
    return TrainData(task="regression", X_train=X, y_train=y, X_val=X[:0], y_val=y[:0])


def test_linear_members_are_cross_fitted_ridge_models_that_selection_may_keep():
    from sklearn.linear_model import Ridge

    from service.training.ensemble import assign_folds
    from service.training.linear import L2_STRENGTHS

    data = _near_linear()
    cfg = EnsembleConfig(members=8, folds=4, hidden_layers=(32, 32), epochs=40, batch_size=32, seed=0)
    result = train_ensemble(data, cfg)
    info = result.info["ensemble"]
    assert info["members_trained"] == 8 and info["linear_models"] == 4 * len(L2_STRENGTHS)
    linear = [m for m in info["kept"] if m["kind"] == "linear"]
    assert linear and sum(m["weight"] for m in linear) > 0.5  # the truth is linear: selection leans on them
    fold = assign_folds(len(data.X_train), cfg.folds, cfg.seed)
    net = result.net
    X = torch.as_tensor(data.X_train)
    kept = [m["member"] for m in info["kept"]]
    with torch.inference_mode():
        out = net(X)
    for slot, m in enumerate(info["kept"]):
        if m["kind"] != "linear":
            continue
        # its MLP layers are zero: the output is the skip path's alone, a ridge fit on every fold but its own
        assert all(float(layer.weight.detach()[slot].abs().max()) == 0 for layer in net.layers)
        rows = fold != m["fold"]
        ref = Ridge(alpha=m["l2"] * rows.sum()).fit(data.X_train[rows].astype(np.float64), data.y_train[rows])
        np.testing.assert_allclose(out[slot, :, 0].numpy(), ref.predict(data.X_train), atol=1e-4)
    assert len(kept) == net.members


def test_linear_members_follow_the_config_and_leave_training_unchanged():
    data = _near_linear()
    cfg = EnsembleConfig(members=4, folds=2, hidden_layers=(8,), epochs=6, batch_size=32, seed=1)
    with_linear = train_ensemble(data, cfg)
    without = train_ensemble(data, EnsembleConfig(**{**cfg.__dict__, "linear_members": False}))
    assert without.info["ensemble"]["linear_models"] == 0
    assert all(m["kind"] == "mlp" for m in without.info["ensemble"]["kept"])
    # the MLP members train exactly as before: the linear models are fit after, from the same rows
    assert [r["member_val_loss"] for r in with_linear.history] == [r["member_val_loss"] for r in without.history]
    skipless = train_ensemble(data, EnsembleConfig(**{**cfg.__dict__, "linear_skip": False}))
    assert skipless.info["ensemble"]["linear_models"] == 0  # they live on the skip path
