"""Training on data larger than memory: statistics in one streaming pass, the hashed split, the two-level shuffle,
and the streamed loops (single network and ensemble), resumed at an epoch boundary."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from service.training import streaming as S
from service.training.ensemble import EnsembleConfig, EnsembleState
from service.training.features import Encoding, fit_preprocessing, fit_regression_targets, transform
from service.training.ingest import DataError
from service.training.loop import EpochReport, TrainConfig, TrainingError, TrainState
from service.training.nets import NetSpec
from service.training.pipeline import SplitSpec, prepare

N = 20_000
KINDS = {"x": "numeric", "n": "numeric", "flag": "boolean", "c": "categorical"}
FEATURES = list(KINDS)
ENSEMBLE_ENCODING = Encoding(missing_indicators=True, bins=8, min_category_rows=2)


def _table(n: int = N, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    xs = pa.array(np.where(rng.random(n) < 0.1, np.nan, x), pa.float64(), from_pandas=True)  # NaN → null
    count = rng.integers(0, 40, n)
    flag = rng.random(n) < 0.3
    c = rng.choice(["red", "green", "blue", "rare"], n, p=[0.5, 0.3, 0.1999, 0.0001])
    signal = x + 0.08 * count - 1.6 + flag + (c == "red") + rng.normal(scale=0.4, size=n)
    return pa.table({"x": xs, "n": count, "flag": flag, "c": c, "y": np.where(signal > 0, "yes", "no"),
                     "v": signal * 3 + 10, "rid": np.arange(n)})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    table = _table()
    path = tmp_path_factory.mktemp("stream") / "data.parquet"
    pq.write_table(table, path, row_group_size=1500)
    return path, table


def _summaries(table: pa.Table) -> dict[str, dict]:
    out = {}
    for name in table.column_names:
        col = table.column(name)
        out[name] = {"n_unique": len(col.unique()), "n_missing": col.null_count}
    return out


def _plan(path: Path, table: pa.Table, *, budget_share: int = 4, validation: float = 0.2, test: float = 0.0,
          targets: tuple[str, ...] = ("y",), encoding: Encoding = ENSEMBLE_ENCODING, batch: int = 256,
          features: list[str] = FEATURES, budget: int | None = None) -> S.StreamPlan:
    kinds = {**KINDS, "rid": "numeric"}
    estimated = S.estimate_bytes(table.num_rows, _summaries(table), features, kinds, list(targets), encoding)
    return S.plan_stream(path, [*features, *targets], n_rows=table.num_rows, estimated_bytes=estimated,
                         budget=budget or estimated // budget_share, seed=3, validation_fraction=validation,
                         test_fraction=test, batch_size=batch)


def _train_rows(plan: S.StreamPlan, table: pa.Table) -> np.ndarray:
    return np.flatnonzero(S.row_splits(np.arange(table.num_rows), plan) == S.SPLIT_TRAIN)


def test_streamed_statistics_equal_the_in_memory_ones(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    plan = _plan(path, table)
    prepared = S.prepare_streamed(plan, targets=["y"], features=FEATURES, kinds=KINDS, task="classification",
                                  encoding=ENSEMBLE_ENCODING)
    reference = fit_preprocessing(table.take(pa.array(_train_rows(plan, table))), FEATURES, KINDS,
                                  ENSEMBLE_ENCODING)
    assert prepared.preprocessing["n_inputs"] == reference["n_inputs"]
    streamed = {f["name"]: f for f in prepared.preprocessing["features"]}
    for ref in reference["features"]:
        got = streamed[ref["name"]]
        assert set(got) == set(ref), ref["name"]
        if ref["kind"] == "categorical":  # counted exactly: the same levels (the rare one left out) and fill
            assert got == ref
            assert "rare" not in got["categories"]
            continue
        if ref["name"] in ("n", "flag"):  # integers of a narrow range: counted value by value, exact
            assert got["fill"] == ref["fill"]
            assert got.get("bins") == ref.get("bins")
            assert got["mean"] == pytest.approx(ref["mean"], rel=1e-12)
            assert got["scale"] == pytest.approx(ref["scale"], rel=1e-12)
            continue
        # a float column: the median and bins within a histogram bin of the column's range, the end edges exact;
        # the mean and scale of the filled values follow from the median
        width = (max(table.column("x").to_pylist(), key=lambda v: v or -1e9) + 5) / S.HISTOGRAM_BINS
        assert got["fill"] == pytest.approx(ref["fill"], abs=width)
        assert got["bins"][0] == ref["bins"][0] and got["bins"][-1] == ref["bins"][-1]
        np.testing.assert_allclose(got["bins"], ref["bins"], atol=width)
        assert got["mean"] == pytest.approx(ref["mean"], abs=width * 0.1 + 1e-12)
        assert got["scale"] == pytest.approx(ref["scale"], rel=1e-4)
        assert got["missing_indicator"] is True
    assert prepared.target == {"task": "classification", "labels": ["no", "yes"]}


def test_regression_targets_are_fitted_exactly_on_every_row(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    plan = _plan(path, table, targets=("v",), encoding=Encoding())
    prepared = S.prepare_streamed(plan, targets=["v"], features=FEATURES, kinds=KINDS, task="regression")
    reference = fit_regression_targets(table, ["v"])
    assert prepared.target["mean"] == pytest.approx(reference["mean"], rel=1e-12)
    assert prepared.target["scale"] == pytest.approx(reference["scale"], rel=1e-12)
    assert prepared.data.y_val.shape == (len(prepared.data.X_val), 1)
    assert prepared.data.n_outputs == 1


def test_the_split_is_a_hash_of_row_and_seed_and_held_out_rows_are_capped(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    plan = _plan(path, table, budget=N * 1000, validation=0.2, test=0.1)
    assert plan.validation_fraction == 0.2 and plan.test_fraction == 0.1 and not plan.notes
    split = S.row_splits(np.arange(N), plan)
    np.testing.assert_array_equal(split, S.row_splits(np.arange(N), plan))  # the same on every pass
    assert abs((split == S.SPLIT_VALIDATION).mean() - 0.2) < 0.02
    assert abs((split == S.SPLIT_TEST).mean() - 0.1) < 0.02
    other = S.row_splits(np.arange(N), S.StreamPlan(**{**plan.__dict__, "seed": 4}))
    assert (other != split).mean() > 0.2
    # a tight budget: the held-out rows each fit in an eighth of it, and the plan says so
    tight = _plan(path, table, budget_share=8, validation=0.2, test=0.1)
    row_bytes = tight.estimated_bytes // N
    for fraction in (tight.validation_fraction, tight.test_fraction):
        assert fraction * N * row_bytes <= tight.budget_bytes / S.HOLD_OUT_SHARE + row_bytes
    assert tight.validation_fraction < 0.2 and tight.test_fraction < 0.1
    assert len(tight.notes) == 2 and "training.validation_fraction 0.2 lowered to" in tight.notes[0]
    prepared = S.prepare_streamed(tight, targets=["y"], features=FEATURES, kinds=KINDS, task="classification",
                                  encoding=ENSEMBLE_ENCODING)
    data = prepared.info["data"]
    assert data["streamed"] is True and data["row_groups"] == 14 and data["notes"] == list(tight.notes)
    assert prepared.info["n_train"] + prepared.info["n_validation"] + prepared.info["n_test"] == N
    assert len(prepared.X_test) == prepared.info["n_test"] > 0


def test_the_two_level_shuffle_gives_every_training_row_once_per_epoch(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    plan = _plan(path, table, features=[*FEATURES, "rid"], budget_share=16)
    assert plan.buffer_rows < N // 4  # the buffer holds a small part of the data
    prepared = S.prepare_streamed(plan, targets=["y"], features=[*FEATURES, "rid"], kinds={**KINDS, "rid": "numeric"},
                                  task="classification", encoding=Encoding())
    stream = prepared.stream
    expected = _train_rows(plan, table)
    orders = []
    for epoch in (1, 2):
        batches = list(stream.batches(epoch, 100))
        rows = np.concatenate([b[2] for b in batches])
        assert len(rows) == len(expected) == stream.n_train
        np.testing.assert_array_equal(np.sort(rows), expected)  # every training row exactly once
        assert all(len(b[0]) == 100 for b in batches[:-1])
        # the batch's inputs are its rows' own (the row id column, standardised, comes back)
        rid = prepared.preprocessing["features"][-1]
        X, _, r = batches[3]
        np.testing.assert_allclose(X[:, -1] * rid["scale"] + rid["mean"], r, atol=1e-2)
        orders.append(rows)
        assert sorted(stream.group_order(epoch)) == list(range(plan.row_groups))
    assert (orders[0] != orders[1]).mean() > 0.9  # a new order each epoch
    assert stream.group_order(1) != stream.group_order(2)
    # rows of one row group end up spread over the epoch (the buffer mixes groups), not in one run
    first_group = np.flatnonzero(orders[0] < 1500)
    assert first_group.max() - first_group.min() > 2 * 1500
    # the same epoch twice: the same batches (a resumed job steps on what it would have)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in stream.batches(2, 100)]), orders[1])


def test_shuffle_buffer_yields_each_row_once_whatever_the_chunks() -> None:
    rng = np.random.default_rng(0)
    sizes = [7, 300, 1, 64, 999, 2]
    start, chunks = 0, []
    for size in sizes:
        rows = np.arange(start, start + size, dtype=np.int64)
        chunks.append((rows[:, None].astype(np.float32), None, rows))
        start += size
    out = list(S.shuffled(iter(chunks), 128, 32, rng))
    rows = np.concatenate([b[2] for b in out])
    np.testing.assert_array_equal(np.sort(rows), np.arange(start))
    assert all(len(b[0]) <= 32 for b in out)
    np.testing.assert_array_equal(np.concatenate([b[0][:, 0] for b in out]), rows)


def _prepared(path: Path, table: pa.Table, encoding: Encoding, task: str = "classification",
              target: str = "y") -> object:
    plan = _plan(path, table, targets=(target,), encoding=encoding, budget_share=6)
    return S.prepare_streamed(plan, targets=[target], features=FEATURES, kinds=KINDS, task=task, encoding=encoding)


def _stop_after(epoch: int, saved: list) -> object:
    def hook(report: EpochReport) -> str | None:
        if report.epoch == epoch:
            saved.append((report.snapshot(), list(report.history)))
            return "time_limit"
        return None
    return hook


def test_streamed_network_learns_and_resumes_bit_for_bit(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    prepared = _prepared(path, table, Encoding())
    spec = NetSpec(type="mlp", hidden_layers=(16,), activation="relu", dropout=0.1)
    config = TrainConfig(epochs=3, batch_size=128, early_stopping_patience=0)
    whole = S.train_network_streamed(prepared.stream, prepared.data, spec, config)
    assert [row["val_accuracy"] for row in whole.history][-1] > 0.85
    assert {"train_loss", "train_accuracy", "val_loss", "lr", "seconds"} <= set(whole.history[0])
    saved: list = []
    first = S.train_network_streamed(prepared.stream, prepared.data, spec, config, on_epoch=_stop_after(1, saved))
    assert first.stopped_by == "time_limit"
    state, history = saved[0]
    assert isinstance(state, TrainState) and state.epoch == 1
    resumed = S.train_network_streamed(prepared.stream, prepared.data, spec, config, resume=state, history=history)
    for a, b in zip(whole.net.state_dict().values(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in whole.history]


def test_streamed_ensemble_validates_on_the_shared_split_and_resumes(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    prepared = _prepared(path, table, ENSEMBLE_ENCODING)
    cfg = EnsembleConfig(members=4, folds=4, hidden_layers=(16,), epochs=3, batch_size=256,
                         early_stopping_patience=0)
    whole = S.train_ensemble_streamed(prepared.stream, prepared.data, cfg)
    info = whole.info["ensemble"]
    assert info["validation"] == "shared split" and info["folds"] == 1  # folds > 1 cannot stream
    assert whole.kept_metrics["val_accuracy"] > 0.85
    saved: list = []
    S.train_ensemble_streamed(prepared.stream, prepared.data, cfg, on_epoch=_stop_after(2, saved))
    state, history = saved[0]
    assert isinstance(state, EnsembleState) and state.best_out.shape[1] == len(prepared.data.X_val)
    resumed = S.train_ensemble_streamed(prepared.stream, prepared.data, cfg, resume=state, history=history)
    for a, b in zip(whole.net.state_dict().values(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.kept_metrics == whole.kept_metrics


def test_streamed_accuracy_is_close_to_the_in_memory_one(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    prepared = _prepared(path, table, Encoding())
    spec = NetSpec(type="mlp", hidden_layers=(16,), activation="relu")
    config = TrainConfig(epochs=4, batch_size=128, early_stopping_patience=0)
    streamed = S.train_network_streamed(prepared.stream, prepared.data, spec, config)
    memory = prepare(table, targets=["y"], features=FEATURES, kinds=KINDS, task="classification",
                     split=SplitSpec(validation_fraction=0.2))
    from service.training.loop import train
    whole = train(memory.data, spec, config)
    # both judged on the same rows: the streamed job's validation rows
    X = torch.as_tensor(transform(table, memory.preprocessing))
    Xs = torch.as_tensor(transform(table, prepared.preprocessing))
    y = torch.as_tensor(np.asarray(table.column("y").to_pylist()) == "yes")
    rows = torch.as_tensor(np.flatnonzero(S.row_splits(np.arange(N), prepared.stream.plan) == S.SPLIT_VALIDATION))
    with torch.no_grad():
        acc_memory = float(((whole.net(X[rows])[:, 0] > 0) == y[rows]).float().mean())
        acc_streamed = float(((streamed.net(Xs[rows])[:, 0] > 0) == y[rows]).float().mean())
    assert acc_memory > 0.85
    assert abs(acc_streamed - acc_memory) < 0.02


def test_bad_inputs_are_refused_with_the_column(tmp_path: Path, data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    one_class = table.set_column(table.schema.get_field_index("y"), "y", pa.array(["yes"] * N))
    bad = tmp_path / "one.parquet"
    pq.write_table(one_class, bad, row_group_size=5000)
    with pytest.raises(DataError, match="only one class") as err:
        S.prepare_streamed(_plan(bad, one_class), targets=["y"], features=FEATURES, kinds=KINDS,
                           task="classification")
    assert err.value.column == "y"
    constant = table.set_column(table.schema.get_field_index("v"), "v", pa.array([2.0] * N))
    pq.write_table(constant, bad, row_group_size=5000)
    with pytest.raises(DataError, match="same value") as err:
        S.prepare_streamed(_plan(bad, constant, targets=("v",)), targets=["v"], features=FEATURES, kinds=KINDS,
                           task="regression")
    assert err.value.column == "v"
    empty = table.set_column(table.schema.get_field_index("x"), "x", pa.nulls(N, pa.float64()))
    pq.write_table(empty, bad, row_group_size=5000)
    with pytest.raises(DataError, match="feature 'x' has no numeric values") as err:
        S.prepare_streamed(_plan(bad, empty), targets=["y"], features=FEATURES, kinds=KINDS, task="classification")
    assert err.value.column == "x"
    prepared = _prepared(path, table, Encoding())
    with pytest.raises(TrainingError, match="lbfgs"):
        S.train_network_streamed(prepared.stream, prepared.data, NetSpec(type="logistic_regression"),
                                 TrainConfig(optimizer="lbfgs"))
    no_val = S.prepare_streamed(_plan(path, table, validation=0.0), targets=["y"], features=FEATURES, kinds=KINDS,
                                task="classification")
    with pytest.raises(TrainingError, match="validation_fraction above 0"):
        S.train_ensemble_streamed(no_val.stream, no_val.data, EnsembleConfig(members=2, folds=1, epochs=1))


def test_which_jobs_stream(data_file: tuple[Path, pa.Table]) -> None:
    path, table = data_file
    summaries = _summaries(table)
    common = dict(n_rows=N, columns=summaries, features=FEATURES, kinds=KINDS, targets=["y"], encoding=Encoding(),
                  seed=0, validation_fraction=0.2, test_fraction=0.0, batch_size=32)
    estimated = S.estimate_bytes(N, summaries, FEATURES, KINDS, ["y"], Encoding())
    # x, n, flag: one input each; c: one per level; one target
    assert estimated == N * (4 * (3 + summaries["c"]["n_unique"]) + 8)
    assert S.plan_for_job(path, budget=estimated, model_type="mlp", optimizer="adam", **common) == (None, None)
    plan, whole = S.plan_for_job(path, budget=estimated - 1, model_type="mlp", optimizer="adam", **common)
    assert plan is not None and whole is None and plan.row_groups == 14
    for model, optimizer, why in (("perceptron", None, "a perceptron trains on every row at once"),
                                  ("logistic_regression", "lbfgs", "optimizer 'lbfgs' takes full-batch steps")):
        plan, whole = S.plan_for_job(path, budget=estimated // 2, model_type=model, optimizer=optimizer, **common)
        assert plan is None and whole["streamed"] is False and why in whole["notes"][0]
    dated = {**common, "kinds": {**KINDS, "x": "datetime"}}
    plan, whole = S.plan_for_job(path, budget=1000, model_type="ensemble", optimizer="adamw", **dated)
    assert plan is None and "date feature(s) ['x']" in whole["notes"][0]
    assert S.budget_bytes(123) == 123
    assert 0 < S.budget_bytes(0) <= S.memory_limit_bytes()
    assert S.budget_bytes(0, jobs=4) == S.memory_limit_bytes() // 2 // 4  # shared among the jobs beside it
    assert S.budget_bytes(123, jobs=4) == 123  # a configured budget is each job's
