"""Data larger than memory: training by streaming a data set's Parquet row groups.

A job whose prepared feature matrix (rows × encoded inputs × 4 bytes, plus targets) would exceed its memory budget
never holds that matrix. Instead:

- `plan_stream` estimates the matrix from the data set's row count and column summaries before reading anything;
- each row's split (train, validation or test) is a hash of its row index and the seed, so every pass over the file
  sees the same split without storing it; the validation and test rows are kept in memory, their fractions lowered
  where needed so that each fits in an eighth of the budget (the result says so);
- `prepare_streamed` fits the preprocessing in one pass over the file: counts, means and variances (merged per
  slice, exact), category counts (exact) and, for medians and quantile bins, a histogram per numeric column (exact
  for integer columns of narrow range, else within 1/HISTOGRAM_BINS of the column's range);
- `TrainStream.batches` gives an epoch's minibatches: the row groups in a shuffled order (seeded by the seed and the
  epoch), their training rows through a bounded shuffle buffer, every training row exactly once;
- `train_network_streamed` and `train_ensemble_streamed` are the single network's and the ensemble's training loops
  (loop.train, ensemble.train_ensemble; the ensemble always validates on the shared split) fed by that stream.
  Their snapshots are the in-memory loops' own TrainState / EnsembleState, so a job resumes at an epoch boundary;
  the epoch's shuffle depends on the seed and the epoch only, so a resumed job steps on the same batches.

The model they make is the in-memory path's: the same preprocessing parameters, the same networks, the same model
file. Pure numpy, pyarrow and torch: no database, no HTTP.
"""

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray
from torch import nn

from service.training import metrics as M
from service.training.batched_step import BatchedStep
from service.training.ensemble import (
    EnsembleConfig,
    EnsembleState,
    MemberAdamW,
    _Pool,
    _select,
    _snapshot_rng,
    combine,
    member_outputs,
    member_plan,
    row_losses,
)
from service.training.features import (
    CATEGORICAL_KINDS,
    ClassWeights,
    Encoding,
    _input_width,
    _integral,
    _numeric,
    categorical_item,
    encode_regression,
    encode_target,
    numeric_item,
    summary_bins,
    transform,
)
from service.training.ingest import MAX_CATEGORY_LEVELS, DataError
from service.training.loop import (
    EpochHook,
    EpochReport,
    StepClock,
    StepHook,
    Task,
    TrainConfig,
    TrainData,
    TrainingError,
    TrainResult,
    TrainState,
    _lower_is_better,
    _rng_states,
    as_floats,
    flushed_denormals,
    forward_chunked,
    make_optimizer,
    make_scheduler,
)
from service.training.nets import EnsembleNet, NetSpec, build_network
from service.training.pipeline import Prepared

# Shares of the budget: the validation rows and the test rows each get an eighth, the shuffle buffer a sixteenth (it
# is copied once while it is shuffled), a slice read from the file a 32nd; the rest is for decoding pages.
HOLD_OUT_SHARE = 8
BUFFER_SHARE = 16
READ_SHARE = 32
MIN_READ_ROWS = 256
HISTOGRAM_BINS = 8192  # per numeric feature, for its median and quantile bins (64 KiB each)
EXACT_RANGE = 8192  # integer features spanning fewer values are counted value by value (exact quantiles)
DATE_INPUTS = 12  # inputs a date feature becomes at most (for the estimate only)
SPLIT_TRAIN, SPLIT_VALIDATION, SPLIT_TEST = 0, 1, 2


# ---------------------------------------------------------------- memory


def memory_limit_bytes() -> int:
    """The memory this process may use: its cgroup's limit (v2, else v1) when lower than the machine's RAM."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def budget_bytes(configured: int, jobs: int = 1) -> int:
    """MLPS_TRAIN_MEMORY_BYTES, or (0) half of what this process may use, shared among the `jobs` running beside it."""
    return configured if configured > 0 else memory_limit_bytes() // 2 // max(jobs, 1)


def _status_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss() -> int | None:
    """This process's resident memory now (bytes; None where /proc is missing)."""
    return _status_bytes("VmRSS")


def peak_rss() -> int | None:
    """The highest resident memory of this process since it started or since reset_peak_rss (bytes)."""
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Start the peak (VmHWM) again from the current resident memory; False where the kernel does not allow it.
    A job process forked from a larger parent would otherwise report its parent's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- the plan


def _feature_width(summary: dict[str, Any], kind: str, encoding: Encoding) -> int:
    """Inputs a feature becomes at most, from its data set summary."""
    n_unique = int(summary.get("n_unique") or 0)
    if kind == "datetime":
        return DATE_INPUTS
    if kind in CATEGORICAL_KINDS:
        return max(1, min(n_unique, MAX_CATEGORY_LEVELS))
    width = 1 + bool(encoding.missing_indicators and summary.get("n_missing"))
    if encoding.bins and kind == "numeric" and n_unique >= 3:
        # a whole-number column may get a bin per level in memory (features.Encoding.integer_levels)
        levels = summary_bins(summary, encoding.bins, encoding.integer_levels)
        width += levels if levels > encoding.bins else min(encoding.bins, n_unique - 1) - 1
    return width


def estimate_bytes(n_rows: int, columns: dict[str, dict[str, Any]], features: list[str], kinds: dict[str, str],
                   targets: list[str], encoding: Encoding) -> int:
    """The prepared data's size in memory: rows × (encoded inputs × 4 bytes + 8 bytes per target)."""
    width = sum(_feature_width(columns.get(f, {}), kinds[f], encoding) for f in features)
    return n_rows * (4 * width + 8 * len(targets))


@dataclass(frozen=True)
class StreamPlan:
    """How a job streams its data set: where, which columns, the split, and the sizes that keep it in budget."""

    path: Path
    columns: list[str]
    n_rows: int
    group_rows: tuple[int, ...]  # rows of each row group, in file order
    seed: int
    validation_fraction: float
    test_fraction: float
    read_rows: int  # rows per slice read from a row group
    buffer_rows: int  # the shuffle buffer's capacity
    budget_bytes: int
    estimated_bytes: int
    notes: tuple[str, ...] = ()
    # numeric features' (min, max) over every row, from the data set's summary (else the Parquet footer's)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def row_groups(self) -> int:
        return len(self.group_rows)

    @property
    def group_offsets(self) -> NDArray[np.int64]:
        return np.concatenate([[0], np.cumsum(self.group_rows)[:-1]]).astype(np.int64) if self.group_rows else \
            np.zeros(0, dtype=np.int64)


def plan_stream(path: Path, columns: list[str], *, n_rows: int, estimated_bytes: int, budget: int, seed: int,
                validation_fraction: float, test_fraction: float, batch_size: int,
                ranges: dict[str, tuple[float, float]] | None = None) -> StreamPlan:
    """The plan of a job whose data (estimated_bytes) exceed its budget: hold-out fractions lowered until the
    validation and the test rows each fit in 1/HOLD_OUT_SHARE of the budget; slices and buffer sized likewise."""
    meta = pq.ParquetFile(path).metadata
    group_rows = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
    row_bytes = max(1, estimated_bytes // max(n_rows, 1))
    hold_rows = budget // HOLD_OUT_SHARE // row_bytes
    notes: list[str] = []
    fractions = {"validation_fraction": validation_fraction, "test_fraction": test_fraction}
    for name, fraction in list(fractions.items()):
        if fraction > 0 and fraction * n_rows > hold_rows:
            lowered = max(hold_rows, 1) / n_rows
            fractions[name] = lowered
            notes.append(f"training.{name} {fraction:g} lowered to {lowered:.3g} ({max(hold_rows, 1):,} rows) so "
                         f"that the {name.split('_')[0]} rows fit in 1/{HOLD_OUT_SHARE} of the memory budget "
                         f"({budget:,} bytes)")
    read_rows = int(min(max(group_rows, default=1), max(MIN_READ_ROWS, budget // READ_SHARE // row_bytes)))
    buffer_rows = int(max(4 * batch_size, budget // BUFFER_SHARE // row_bytes))
    return StreamPlan(path=path, columns=columns, n_rows=n_rows, group_rows=group_rows, seed=seed,
                      validation_fraction=fractions["validation_fraction"], test_fraction=fractions["test_fraction"],
                      read_rows=read_rows, buffer_rows=buffer_rows, budget_bytes=budget,
                      estimated_bytes=estimated_bytes, notes=tuple(notes), ranges=dict(ranges or {}))


def row_uniforms(rows: NDArray[np.int64], seed: int) -> NDArray[np.float64]:
    """A number in [0, 1) per row index, the same for the same (row, seed) on every pass (splitmix64)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15) + \
            np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def row_splits(rows: NDArray[np.int64], plan: StreamPlan) -> NDArray[np.int8]:
    """SPLIT_TRAIN, SPLIT_VALIDATION or SPLIT_TEST of each row."""
    u = row_uniforms(rows, plan.seed)
    split = np.full(len(rows), SPLIT_TRAIN, dtype=np.int8)
    split[u < plan.test_fraction + plan.validation_fraction] = SPLIT_VALIDATION
    split[u < plan.test_fraction] = SPLIT_TEST
    return split


def _open(plan: StreamPlan) -> pq.ParquetFile:
    # Marks the file used now: a bounded cache of data set files never evicts one used recently, and a streaming
    # job reopens its file every epoch (a read-only store leaves the mark out, harmlessly).
    with contextlib.suppress(OSError):
        os.utime(plan.path)
    # Pages are read as they are decoded (no pre-buffering of a whole row group).
    return pq.ParquetFile(plan.path, buffer_size=1 << 20, pre_buffer=False)


def _slices(plan: StreamPlan, groups: list[int]) -> Iterator[tuple[pa.Table, NDArray[np.int64]]]:
    """(slice of rows, their row indices) of these row groups, in that order, at most plan.read_rows at a time."""
    pf = _open(plan)
    offsets = plan.group_offsets
    try:
        for g in groups:
            start = int(offsets[g])
            for batch in pf.iter_batches(batch_size=plan.read_rows, row_groups=[g], columns=plan.columns,
                                         use_threads=False):
                yield pa.Table.from_batches([batch]), np.arange(start, start + batch.num_rows, dtype=np.int64)
                start += batch.num_rows
    finally:
        pf.close()


# ---------------------------------------------------------------- statistics in one pass


class _Moments:
    """Count, mean and sum of squared deviations, merged slice by slice (Chan et al.)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, values: NDArray[np.float64]) -> None:
        if values.size == 0:
            return
        n_b, mean_b = values.size, float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))


class _Quantiles:
    """Counts of a numeric column's values over [lo, hi]: one per integer where the column holds integers of a
    narrow range (exact), else HISTOGRAM_BINS equal bins, the values spread evenly inside a bin."""

    def __init__(self, lo: float, hi: float, integral: bool) -> None:
        self.lo, self.hi = lo, hi
        self.exact = integral and hi - lo < EXACT_RANGE
        self.bins = int(hi - lo) + 1 if self.exact else HISTOGRAM_BINS
        self.width = 1.0 if self.exact else max(hi - lo, 1e-300) / self.bins
        self.counts = np.zeros(self.bins, dtype=np.int64)

    def add(self, values: NDArray[np.float64]) -> None:
        idx = np.floor((values - self.lo) / self.width) if not self.exact else np.rint(values - self.lo)
        self.counts += np.bincount(np.clip(idx, 0, self.bins - 1).astype(np.intp), minlength=self.bins)

    def quantiles(self, qs: NDArray[np.float64], low: float, high: float) -> NDArray[np.float64]:
        """As np.quantile(values, qs) (linear interpolation between order statistics); `low` and `high` are the
        values' own minimum and maximum (exact, unlike the histogram's)."""
        n = int(self.counts.sum())
        h = (n - 1) * qs
        below = np.floor(h).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        a, b = self._order(below, n, low, high), self._order(above, n, low, high)
        result: NDArray[np.float64] = a + (h - below) * (b - a)
        return result

    def _order(self, k: NDArray[np.int64], n: int, low: float, high: float) -> NDArray[np.float64]:
        """The k-th smallest values (0-based)."""
        cum = np.cumsum(self.counts)
        b = np.searchsorted(cum, k, side="right")
        if self.exact:
            values = self.lo + b.astype(np.float64)
        else:
            before = np.where(b > 0, cum[np.maximum(b - 1, 0)], 0)
            values = self.lo + (b + (k - before + 0.5) / self.counts[b]) * self.width
        return np.where(k == 0, low, np.where(k == n - 1, high, np.clip(values, low, high)))


def _range_of(pf: pq.ParquetFile, name: str) -> tuple[float, float] | None:
    """A column's (min, max) from the Parquet footer's statistics, when every row group has them."""
    meta = pf.metadata
    j = pf.schema_arrow.get_field_index(name)
    lo, hi = math.inf, -math.inf
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(j).statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == meta.row_group(g).num_rows:
                continue
            return None
        lo, hi = min(lo, float(stats.min)), max(hi, float(stats.max))
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


@dataclass
class _FeatureStats:
    name: str
    kind: str
    moments: _Moments = field(default_factory=_Moments)
    rows: int = 0  # training rows seen, missing values included
    quantiles: _Quantiles | None = None
    levels: dict[Any, int] | None = None  # categorical: training rows per level


def prepare_streamed(plan: StreamPlan, *, targets: list[str], features: list[str], kinds: dict[str, str],
                     task: str, class_weights: ClassWeights = None, encoding: Encoding = Encoding()) -> Prepared:
    """The streaming counterpart of pipeline.prepare: preprocessing and target parameters fitted in one pass over
    the file (features on the training rows, targets on every row that has one, as prepare does), the validation
    and test rows in memory, and the TrainStream of the training rows."""
    pf = _open(plan)
    integer_like = {f.name for f in pf.schema_arrow if pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)}
    stats: list[_FeatureStats] = []
    for name in features:
        s = _FeatureStats(name, kinds[name])
        if kinds[name] in CATEGORICAL_KINDS:
            s.levels = {}
        else:
            found = plan.ranges.get(name) or _range_of(pf, name)
            if found is not None:
                s.quantiles = _Quantiles(*found, name in integer_like)
        stats.append(s)
    pf.close()
    labels: set[Any] = set()
    label_counts: dict[Any, int] = {}  # training rows per (raw) label
    target_moments = [_Moments() for _ in targets] if task == "regression" else []
    held: dict[int, list[pa.Table]] = {SPLIT_VALIDATION: [], SPLIT_TEST: []}
    n_dropped = 0
    n_train = 0
    for part, rows in _slices(plan, list(range(plan.row_groups))):
        keep = _has_target(part, targets, task)
        if keep is not None:
            n_dropped += int((~keep).sum())
            part, rows = part.filter(pa.array(keep)), rows[keep]
        split = row_splits(rows, plan)
        if task == "classification":
            values = part.column(targets[0])
            values = _integral(values) if pa.types.is_floating(values.type) else values
            counts = pc.value_counts(values)
            labels.update(counts.field("values").to_pylist())
            train_values = values.filter(pa.array(split == SPLIT_TRAIN))
            tc = pc.value_counts(train_values)
            for v, c in zip(tc.field("values").to_pylist(), tc.field("counts").to_pylist(), strict=True):
                label_counts[v] = label_counts.get(v, 0) + c
        for m, name in zip(target_moments, targets, strict=False):
            values = _numeric(part.column(name))
            m.add(values[~np.isnan(values)])
        for code in (SPLIT_VALIDATION, SPLIT_TEST):
            if (split == code).any():
                held[code].append(part.filter(pa.array(split == code)))
        train_part = part.filter(pa.array(split == SPLIT_TRAIN))
        n_train += train_part.num_rows
        for s in stats:
            _add_feature(s, train_part.column(s.name))
    if n_train == 0:
        raise DataError("no training rows: every row is held out or has no target")
    target = _target_params(task, targets, labels, target_moments, n_dropped, n_train)
    preprocessing = _preprocessing(stats, encoding)
    if preprocessing["n_inputs"] == 0:
        raise DataError("no feature gives the network an input: every level of the categorical "
                        "feature(s) occurs in one training row only (identifiers?); choose other features")
    weights = _class_weights(target, label_counts, class_weights)

    def arrays(code: int) -> tuple[NDArray[np.float32], NDArray[Any] | None]:
        table = pa.concat_tables(held[code]) if held[code] else None
        held[code] = []
        if table is None or table.num_rows == 0:
            return np.zeros((0, preprocessing["n_inputs"]), dtype=np.float32), _targets_of(None, targets, target)
        return transform(table, preprocessing), _targets_of(table, targets, target)

    X_val, y_val = arrays(SPLIT_VALIDATION)
    X_test, y_test = arrays(SPLIT_TEST)
    empty_y = _targets_of(None, targets, target)
    data = TrainData(task=task, X_train=np.zeros((0, preprocessing["n_inputs"]), dtype=np.float32), y_train=empty_y,
                     X_val=X_val, y_val=y_val, n_classes=len(target.get("labels", [])),
                     target_scale=target.get("scale", 1.0), class_weights=weights)
    stream = TrainStream(plan, preprocessing, target, targets, task, n_train)
    info = {"n_train": n_train, "n_validation": len(X_val), "n_test": len(X_test), "n_rows_without_target": n_dropped,
            "n_inputs": int(preprocessing["n_inputs"]), "data": stream.describe()}
    return Prepared(data=data, preprocessing=preprocessing, target=target, info=info, X_test=X_test, y_test=y_test,
                    stream=stream)


def _has_target(part: pa.Table, targets: list[str], task: str) -> NDArray[np.bool_] | None:
    if task == "classification":
        return np.asarray(part.column(targets[0]).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if task == "regression":
        keep = np.ones(part.num_rows, dtype=bool)
        for name in targets:
            keep &= ~np.isnan(_numeric(part.column(name)))
        return keep
    return None


def _add_feature(s: _FeatureStats, col: pa.ChunkedArray) -> None:
    if s.levels is not None:
        strings = pc.cast(col, pa.string()).drop_null()
        counts = pc.value_counts(strings)
        for v, c in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            s.levels[v] = s.levels.get(v, 0) + c
        return
    values = _numeric(col)
    finite = values[~np.isnan(values)]
    s.rows += values.size
    s.moments.add(finite)
    if s.quantiles is not None and finite.size:
        s.quantiles.add(finite)


def _preprocessing(stats: list[_FeatureStats], encoding: Encoding) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for s in stats:
        if s.levels is not None:
            if not s.levels:
                raise DataError(f"feature '{s.name}' has no values in the training rows", column=s.name)
            out.append(categorical_item(s.name, list(s.levels), list(s.levels.values()), encoding))
            continue
        m = s.moments
        if m.n == 0:
            raise DataError(f"feature '{s.name}' has no numeric values in the training rows", column=s.name)
        q = s.quantiles
        if q is None:
            raise DataError(f"feature '{s.name}' has no known range (no summary and no Parquet statistics), which "
                            "training on streamed data needs for its median", column=s.name)
        median = float(q.quantiles(np.array([0.5]), m.lo, m.hi)[0])
        # mean and variance of the values with the missing ones filled by the median, from the present ones'
        n_missing = s.rows - m.n
        mean = (m.n * m.mean + n_missing * median) / s.rows
        m2 = m.m2 + m.n * (m.mean - mean) ** 2 + n_missing * (median - mean) ** 2
        quantiles = (q.quantiles(np.linspace(0, 1, encoding.bins + 1), m.lo, m.hi)
                     if encoding.bins and s.kind == "numeric" else None)
        out.append(numeric_item(s.name, s.kind, median, mean, math.sqrt(max(m2, 0.0) / s.rows), n_missing > 0,
                                quantiles, encoding))
    return {"features": out, "n_inputs": sum(_input_width(f) for f in out)}


def _target_params(task: str, targets: list[str], labels: set[Any], moments: list[_Moments], n_dropped: int,
                   n_kept: int) -> dict[str, Any]:
    if task == "classification":
        if n_kept == 0 and n_dropped:
            raise DataError(f"target '{targets[0]}' has no values", column=targets[0])
        ordered = sorted(labels, key=lambda v: (str(type(v)), v))
        if len(ordered) < 2:
            only = ordered[0] if ordered else None
            raise DataError(f"target '{targets[0]}' has only one class ({only!r}); classification needs at "
                            "least two", column=targets[0])
        return {"task": task, "labels": ordered}
    if task == "regression":
        means, scales = [], []
        for name, m in zip(targets, moments, strict=True):
            if m.n < 2:
                raise DataError(f"target '{name}' has a value in {m.n} row(s) only; regression needs at least 2 "
                                "rows with a target (rows where it is missing or infinite are dropped)", column=name)
            if m.lo == m.hi:
                raise DataError(f"target '{name}' has the same value ({m.lo:g}) in every row; there is nothing to "
                                "learn: choose a target that varies", column=name)
            std = math.sqrt(m.m2 / m.n)
            means.append(m.mean)
            scales.append(std if std > 1e-12 else 1.0)
        return {"task": "regression", "names": targets, "mean": means, "scale": scales}
    return {"task": task}


def _class_weights(target: dict[str, Any], counts: dict[Any, int], spec: ClassWeights) -> list[float] | None:
    """features.class_weights from the training rows' label counts."""
    from service.training.features import class_weights as weights_of

    if target["task"] != "classification" or spec is None:
        return None
    labels = target["labels"]
    if spec == "balanced":
        per_class = np.asarray([counts.get(label, 0) for label in labels], dtype=np.float64)
        balanced: list[float] = (per_class.sum() / (len(labels) * np.maximum(per_class, 1))).tolist()
        return balanced
    return weights_of(np.zeros(0, dtype=np.int64), labels, spec)


def _targets_of(table: pa.Table | None, targets: list[str], target: dict[str, Any]) -> NDArray[Any] | None:
    """The rows' encoded targets, as prepare gives them (class indices, or standardised float32 [n, k])."""
    task = target["task"]
    if task == "classification":
        return np.zeros(0, dtype=np.int64) if table is None else \
            np.asarray(encode_target(table.column(targets[0]), target), dtype=np.int64)
    if task == "regression":
        return np.zeros((0, len(targets)), dtype=np.float32) if table is None else \
            encode_regression(table, target).astype(np.float32)
    return None


# ---------------------------------------------------------------- the stream of training rows


Batch = tuple[NDArray[np.float32], NDArray[Any] | None, NDArray[np.int64]]  # inputs, targets, row indices


class TrainStream:
    """The training rows of a StreamPlan, preprocessed, as each epoch's shuffled minibatches."""

    def __init__(self, plan: StreamPlan, preprocessing: dict[str, Any], target: dict[str, Any], targets: list[str],
                 task: str, n_train: int) -> None:
        self.plan, self.preprocessing, self.target, self.targets, self.task = plan, preprocessing, target, targets, task
        self.n_train = n_train
        self.n_inputs = int(preprocessing["n_inputs"])

    def describe(self) -> dict[str, Any]:
        """What the job's result says of its data."""
        plan = self.plan
        return {"streamed": True, "row_groups": plan.row_groups, "rows_per_read": plan.read_rows,
                "shuffle_buffer_rows": plan.buffer_rows, "budget_bytes": plan.budget_bytes,
                "estimated_bytes": plan.estimated_bytes, "split": "hash of the row index and the seed",
                "validation_fraction": plan.validation_fraction, "test_fraction": plan.test_fraction,
                "notes": list(plan.notes)}

    def steps(self, batch_size: int) -> int:
        return math.ceil(self.n_train / batch_size)

    def group_order(self, epoch: int) -> list[int]:
        """The row groups in this epoch's order (seeded by the seed and the epoch)."""
        order: list[int] = np.random.default_rng([self.plan.seed, epoch, 1]).permutation(self.plan.row_groups).tolist()
        return order

    def _chunks(self, groups: list[int]) -> Iterator[Batch]:
        for part, rows in _slices(self.plan, groups):
            keep = _has_target(part, self.targets, self.task)
            if keep is not None:
                part, rows = part.filter(pa.array(keep)), rows[keep]
            train = row_splits(rows, self.plan) == SPLIT_TRAIN
            if not train.any():
                continue
            part, rows = part.filter(pa.array(train)), rows[train]
            yield transform(part, self.preprocessing), _targets_of(part, self.targets, self.target), rows

    def batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """Every training row once, in minibatches: the row groups in a shuffled order, then a shuffle buffer of
        at most plan.buffer_rows rows (plus one slice)."""
        rng = np.random.default_rng([self.plan.seed, epoch, 2])
        return shuffled(self._chunks(self.group_order(epoch)), self.plan.buffer_rows, batch_size, rng)


def shuffled(chunks: Iterator[Batch], capacity: int, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    """A bounded shuffle buffer: gather chunks until `capacity` rows, shuffle them, give out whole batches until
    half remain, gather again; at the end shuffle and give out the rest. Every row comes out exactly once."""
    pending: list[Batch] = []
    held = 0

    def drain(keep: int) -> Iterator[Batch]:
        nonlocal pending, held
        X = np.concatenate([c[0] for c in pending])
        y = np.concatenate([c[1] for c in pending]) if pending[0][1] is not None else None
        rows = np.concatenate([c[2] for c in pending])
        order = rng.permutation(len(X))
        out = max(0, (len(X) - keep) // batch_size * batch_size) if keep else len(X)
        for start in range(0, out, batch_size):
            idx = order[start:start + batch_size]
            yield X[idx], (y[idx] if y is not None else None), rows[idx]
        rest = order[out:]
        pending = [(X[rest], y[rest] if y is not None else None, rows[rest])] if len(rest) else []
        held = len(rest)

    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk[0])
        if held >= capacity:
            yield from drain(capacity // 2)
    if held:
        yield from drain(0)


# ---------------------------------------------------------------- training from the stream


def _device_batch(task: Task, batch: Batch, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(batch[0], dtype=torch.float32, device=dev)
    return X, task.targets(X, batch[1])


def train_network_streamed(stream: TrainStream, data: TrainData, net_spec: NetSpec, config: TrainConfig,
                           device: str = "cpu", on_epoch: EpochHook | None = None, resume: TrainState | None = None,
                           history: list[dict[str, Any]] | None = None,
                           on_step: StepHook | None = None) -> TrainResult:
    """loop.train over a TrainStream: the same network, optimizer, schedule, early stopping and snapshots; each
    epoch's training figures are the loss (and for classes the accuracy) of its own steps."""
    if config.optimizer == "lbfgs":
        raise TrainingError("optimizer 'lbfgs' takes full-batch steps, which data larger than the memory budget "
                            "cannot; choose 'adam' or 'sgd'")
    with flushed_denormals():
        return _train_network(stream, data, net_spec, config, device, on_epoch, resume, history, on_step)


def _train_network(stream: TrainStream, data: TrainData, net_spec: NetSpec, config: TrainConfig, device: str,
                   on_epoch: EpochHook | None, resume: TrainState | None, history: list[dict[str, Any]] | None,
                   on_step: StepHook | None) -> TrainResult:
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    net = build_network(net_spec, stream.n_inputs, data.n_outputs).to(dev)
    optimizer = make_optimizer(config, net.parameters(), dev)
    scheduler = make_scheduler(config, optimizer)
    task = Task(data, dev)
    Xv = torch.as_tensor(data.X_val, dtype=torch.float32, device=dev)
    Yv = task.targets(Xv, data.y_val)
    has_batch_norm = any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    gen = torch.Generator(device=dev).manual_seed(config.seed)  # kept in the snapshot, as loop.train's
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
    classify = data.task == "classification"
    net.train()
    steps = stream.steps(config.batch_size)
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        clock = StepClock(on_step, epoch, steps)
        running = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.float64, device=dev)
        seen = 0
        for step, batch in enumerate(stream.batches(epoch, config.batch_size), 1):
            if has_batch_norm and len(batch[0]) < 2 and stream.n_train > 1:
                continue  # batch norm cannot normalise a batch of one in train mode
            X, Y = _device_batch(task, batch, dev)
            out = net(X)
            loss = task.loss(out, Y)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            if config.gradient_clip_norm:
                nn.utils.clip_grad_norm_(net.parameters(), config.gradient_clip_norm)
            optimizer.step()
            running += loss.detach() * len(X)
            seen += len(X)
            if classify:
                correct += (M.predicted_classes(out.detach(), data.n_classes) == Y).sum()
            clock.tick(step, seen)
        net.eval()
        with torch.inference_mode():
            figures: dict[str, torch.Tensor] = {"train_loss": running / max(seen, 1)}
            if classify:
                figures["train_accuracy"] = correct / max(seen, 1)
            if len(Xv):
                figures |= {"val_" + k: v for k, v in task.metrics(forward_chunked(net, Xv), Yv).items()}
            row = as_floats(figures)
        net.train()
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
            elif epoch - (result.best_epoch or 0) >= config.early_stopping_patience:
                result.stopped_at = epoch
                stop = True
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


def train_ensemble_streamed(stream: TrainStream, data: TrainData, cfg: EnsembleConfig, device: str = "cpu",
                            on_epoch: EpochHook | None = None, resume: EnsembleState | None = None,
                            history: list[dict[str, Any]] | None = None,
                            on_step: StepHook | None = None) -> TrainResult:
    """ensemble.train_ensemble over a TrainStream, in its shared-validation-split mode (cross-fitting would need
    every row's fold in memory): every member trains on the streamed rows and validates on the held-out ones."""
    if data.task not in ("classification", "regression"):
        raise ValueError("the ensemble learns classification and regression targets")
    if len(data.X_val) == 0:
        raise TrainingError("the ensemble's members need validation rows when its data are streamed; set "
                            "training.validation_fraction above 0")
    if cfg.folds != 1:
        cfg = dataclasses.replace(cfg, folds=1)
    with flushed_denormals():
        return _train_ensemble(stream, data, cfg, device, on_epoch, resume, history, on_step)


def _train_ensemble(stream: TrainStream, data: TrainData, cfg: EnsembleConfig, device: str,
                    on_epoch: EpochHook | None, resume: EnsembleState | None, history: list[dict[str, Any]] | None,
                    on_step: StepHook | None) -> TrainResult:
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    plan = member_plan(cfg)
    net = EnsembleNet(stream.n_inputs, data.n_outputs, cfg.members, cfg.hidden_layers, cfg.activation,
                      cfg.linear_skip).to(dev)
    net.dropout.copy_(torch.as_tensor([m.dropout for m in plan]))
    params = list(net.parameters())
    optimizer = MemberAdamW(params, lr=torch.as_tensor([m.learning_rate for m in plan], device=dev),
                            weight_decay=torch.as_tensor([m.weight_decay for m in plan], device=dev))
    task = Task(data, dev)
    batched_step = BatchedStep(net, cfg.activation, data.task, data.n_classes)
    k = cfg.members
    classify = data.task == "classification"
    weighted = task.weight is not None and classify
    Xe = torch.as_tensor(data.X_val, dtype=torch.float32, device=dev)
    Ye = task.targets(Xe, data.y_val)
    we = task.weight[Ye] if weighted and task.weight is not None else torch.ones(len(Xe), device=dev)
    pool = _Pool(X=Xe, Y=Ye, row_weight=we, train_mask=torch.ones(k, 0, device=dev),
                 trainable=torch.arange(0, device=dev), eval_rows=torch.arange(len(Xe), device=dev),
                 val_mask=torch.ones(k, len(Xe), device=dev), info={"validation": "shared split", "folds": 1})
    val_weight = pool.val_mask * we
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)  # kept in the snapshot, as train_ensemble's
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
    n_classes = data.n_classes
    net.train()
    steps = stream.steps(cfg.batch_size)
    for epoch in range(first_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        clock = StepClock(on_step, epoch, steps)
        running = torch.zeros(k, dtype=torch.float64, device=dev)
        seen = torch.zeros(k, dtype=torch.float64, device=dev)
        correct = torch.zeros(k, dtype=torch.float64, device=dev)
        counted = torch.zeros(k, dtype=torch.float64, device=dev)
        rows_done = 0
        for step, batch in enumerate(stream.batches(epoch, cfg.batch_size), 1):
            X, Y = _device_batch(task, batch, dev)
            w = task.weight[Y] if weighted and task.weight is not None else torch.ones(len(X), device=dev)
            mask = w[None, :].expand(k, -1)
            denom = mask.sum(1)
            per_member, out = batched_step(X, Y, mask, denom)
            if cfg.gradient_clip_norm:
                optimizer.clip_(cfg.gradient_clip_norm)
            optimizer.step()
            running += per_member.detach() * denom
            seen += denom
            if classify:
                with torch.no_grad():
                    right = M.predicted_classes(out.detach().flatten(0, 1), n_classes).view(k, -1) == Y
                    trained = mask > 0
                    correct += (right & trained).sum(1)
                    counted += trained.sum(1)
            rows_done += len(X)
            clock.tick(step, rows_done)
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
            improved = alive & (val_loss < best_loss)
            progress = alive & (val_loss < best_loss * (1 - cfg.min_improvement))
            best_loss = torch.where(improved, val_loss, best_loss)
            best_epoch = torch.where(improved, epoch, best_epoch)
            since = torch.where(progress, 0, since + 1)
            best_out[improved] = out[improved]
            for p, b in zip(params, best_params, strict=True):
                b[improved] = p.detach()[improved]
            current = combine(out, val_weight * alive[:, None], data.task, n_classes)
            figures = {"val_" + name: v for name, v in task.metrics(current, Ye).items()}
            figures["train_loss"] = train_loss[alive].mean()
            if classify:
                figures["train_accuracy"] = (correct / counted.clamp_min(1))[alive].mean()
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
        patience = cfg.early_stopping_patience
        if patience and (bool((since[alive] >= patience).all()) or int(ensemble_since) >= patience):
            result.stopped_at = epoch
            break
    with torch.no_grad():
        for p, b in zip(params, best_params, strict=True):
            p.copy_(b)
    net.eval()
    if result.stopped_by is None:
        _select(net, result, cfg, plan, pool, best_out, alive, best_epoch, task)
    return result


# ---------------------------------------------------------------- whether a job streams


# Kinds of model and optimizer that train from a stream (the perceptron's rule and L-BFGS's full-batch steps
# need every row at once).
STREAMED_MODELS = ("ensemble", "mlp", "logistic_regression", "autoencoder")


def plan_for_job(path: Path, *, n_rows: int, columns: dict[str, dict[str, Any]], features: list[str],
                 kinds: dict[str, str], targets: list[str], encoding: Encoding, budget: int, model_type: str,
                 optimizer: str | None, seed: int, validation_fraction: float, test_fraction: float,
                 batch_size: int) -> tuple[StreamPlan | None, dict[str, Any] | None]:
    """(the plan, None) when the job's prepared data would exceed `budget` and it can stream; (None, what the result
    says) when they would exceed it but the job cannot stream; (None, None) when they fit."""
    estimated = estimate_bytes(n_rows, columns, features, kinds, targets, encoding)
    if estimated <= budget:
        return None, None
    why = None
    dates = [f for f in features if kinds[f] == "datetime"]
    if model_type not in STREAMED_MODELS:
        why = f"a {model_type} trains on every row at once"
    elif optimizer == "lbfgs" and model_type != "ensemble":
        why = "optimizer 'lbfgs' takes full-batch steps"
    elif dates:
        why = f"date feature(s) {dates} are fitted on every training row at once"
    if why is not None:
        return None, {"streamed": False, "budget_bytes": budget, "estimated_bytes": estimated,
                      "notes": [f"the prepared data (about {estimated:,} bytes) exceed the memory budget "
                                f"({budget:,} bytes, MLPS_TRAIN_MEMORY_BYTES) but were loaded whole: {why}"]}
    ranges = {f: (float(c["stats"]["min"]), float(c["stats"]["max"])) for f, c in columns.items()
              if f in features and isinstance((c.get("stats") or {}).get("min"), (int, float))
              and isinstance(c["stats"].get("max"), (int, float))}
    plan = plan_stream(path, [*features, *targets], n_rows=n_rows, estimated_bytes=estimated, budget=budget,
                       seed=seed, validation_fraction=validation_fraction, test_fraction=test_fraction,
                       batch_size=batch_size, ranges=ranges)
    return plan, None
