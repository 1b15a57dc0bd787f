"""Train and predict time: preprocessing fitted as JSON-able parameters (imputation, standardisation, one-hot,
the ensemble's extra encodings), targets, splits, and records turned into a table.

Pure pyarrow + numpy: no database, no HTTP. Parsing uploads is in `ingest`.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from service.training import dates
from service.training.ingest import MAX_CATEGORY_LEVELS, DataError, quote_value

# Per-class loss weights as a job spec gives them: 'balanced', {label: weight}, or none.
ClassWeights = Literal["balanced"] | dict[str, float] | None


def load_columns(path: Path, names: list[str]) -> pa.Table:
    return pq.read_table(path, columns=names)


def _numeric(arr: pa.ChunkedArray | pa.Array) -> NDArray[np.float64]:
    floats = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    values: NDArray[np.float64] = floats.astype(np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


@dataclass(frozen=True)
class Encoding:
    """How columns become inputs beyond imputation, standardisation and one-hot (the single networks use none of
    it; the ensemble all of it)."""

    missing_indicators: bool = False  # a 0/1 "was missing" input for numeric columns with missing values
    bins: int = 0  # piecewise-linear quantile bins per numeric column (0: none)
    min_category_rows: int = 1  # levels in fewer training rows share the all-zero encoding of unseen levels
    # A numeric column of whole numbers with more distinct values than `bins` + 1 and at most this many (each seen in
    # LEVEL_ROWS training rows on average) gets one bin per value instead of quantile bins: every level its own
    # threshold, as a one-hot of the codes beside the value would give (a school or region number, a count), where
    # quantile bins would merge neighbouring levels that have nothing in common. 0: quantile bins only.
    integer_levels: int = 0


# Kinds a feature is one-hot encoded as: identifiers and free text only train where a job lists them.
CATEGORICAL_KINDS = ("categorical", "identifier", "text")

# Training rows per level, on average, that a whole-number column needs for a bin per level (Encoding.integer_levels).
LEVEL_ROWS = 20


def fit_preprocessing(table: pa.Table, features: list[str], kinds: dict[str, str],
                      encoding: Encoding = Encoding(), layouts: dict[str, str] | None = None) -> dict[str, Any]:
    """Imputation, standardisation and one-hot categories (and what `encoding` adds), fitted on these (training)
    rows only. `layouts` names the date layout of each datetime feature."""
    out: list[dict[str, Any]] = []
    for name in features:
        col = table.column(name)
        if kinds[name] == "datetime":
            out.append(_fit_datetime(name, col, (layouts or {}).get(name, "iso"), encoding))
        elif kinds[name] in CATEGORICAL_KINDS:
            strings = pc.cast(col, pa.string()).drop_null()
            if len(strings) == 0:
                raise DataError(f"feature '{name}' has no values in the training rows", column=name)
            counts = pc.value_counts(strings)
            out.append(categorical_item(name, counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                                        encoding))
        else:
            values = _numeric(col)
            finite = values[~np.isnan(values)]
            if finite.size == 0:
                raise DataError(f"feature '{name}' has no numeric values in the training rows", column=name)
            median = float(np.median(finite))
            filled = np.where(np.isnan(values), median, values)
            edges = None
            if encoding.bins and kinds[name] == "numeric":
                edges = (_integer_edges(finite, encoding) if encoding.integer_levels and
                         np.all(finite == np.round(finite)) else
                         np.quantile(finite, np.linspace(0, 1, encoding.bins + 1)))
            out.append(numeric_item(name, kinds[name], median, float(filled.mean()), float(filled.std()),
                                    finite.size < values.size, edges, encoding))
    return {"features": out, "n_inputs": sum(_input_width(f) for f in out)}


def _integer_edges(values: NDArray[np.float64], encoding: Encoding) -> NDArray[np.float64]:
    """Bin edges of a whole-number column: one bin per distinct value (the first from one below the least), or the
    quantile bins when it has too few or too many levels for that (see Encoding.integer_levels)."""
    levels = np.unique(values)
    if not encoding.bins + 1 < levels.size <= encoding.integer_levels or values.size < LEVEL_ROWS * levels.size:
        return np.quantile(values, np.linspace(0, 1, encoding.bins + 1))
    return np.concatenate([levels[:1] - 1, levels])


def summary_bins(summary: dict[str, Any], bins: int, integer_levels: int) -> int:
    """Bin inputs a numeric column may get, from its data set summary: one per level where its values are whole
    numbers (an integer column, or floats the summary marks `whole_numbers`) and Encoding.integer_levels allows it,
    else `bins`. The summary marks floats only up to a few levels, so a float column of more whole-number levels
    may get more than this says."""
    n_unique = int(summary.get("n_unique") or 0)
    whole = str(summary.get("dtype", "")).startswith(("int", "uint")) or \
        bool(summary.get("stats", {}).get("whole_numbers"))
    return n_unique if bins and whole and bins + 1 < n_unique <= integer_levels else bins


def categorical_item(name: str, values: list[Any], freq: list[int], encoding: Encoding) -> dict[str, Any]:
    """A categorical feature's parameters from its levels and their counts in the training rows."""
    most = min(zip(values, freq, strict=True), key=lambda vc: (-vc[1], vc[0]))[0]
    # A level seen in fewer rows than min_category_rows cannot generalise (one seen once names its row,
    # like an identifier): such levels share the all-zero "other" encoding, as unseen levels do.
    kept = [(v, c) for v, c in zip(values, freq, strict=True) if c >= encoding.min_category_rows]
    if len(kept) > MAX_CATEGORY_LEVELS:  # the most frequent levels; the rest share "other"
        kept = sorted(kept, key=lambda vc: (-vc[1], vc[0]))[:MAX_CATEGORY_LEVELS]
    return {"name": name, "kind": "categorical", "categories": sorted(v for v, _ in kept), "fill": most}


def numeric_item(name: str, kind: str, median: float, mean: float, std: float, has_missing: bool,
                 quantiles: NDArray[np.float64] | None, encoding: Encoding) -> dict[str, Any]:
    """A numeric feature's parameters: the median fills missing values, then (mean, std) of the filled values
    standardise; `quantiles` (at 0, 1/bins, ..., 1 of the present values) give the bins, when the encoding has
    them."""
    item: dict[str, Any] = {"name": name, "kind": kind, "fill": median, "mean": mean,
                            "scale": std if std > 1e-12 else 1.0}
    if encoding.missing_indicators and has_missing:
        item["missing_indicator"] = True
    if quantiles is not None:
        # Piecewise-linear encoding (Gorishniy et al., "On embeddings for numerical features in tabular
        # deep learning", 2022): one input per quantile bin, 0 below it, 1 above it, linear inside, so
        # that a network can bend its answer at the data's own thresholds as a tree does.
        edges = np.unique(quantiles)
        if len(edges) >= 3:
            item["bins"] = edges.tolist()
    return item


def _fit_datetime(name: str, col: pa.ChunkedArray, layout: str, encoding: Encoding) -> dict[str, Any]:
    """A date feature's inputs: the calendar parts that vary in the training rows and that the dates' spacing can
    tell (`dates.parts_for`), each standardised, and the cyclical (sin, cos) pair of each periodic part; a missing or
    unreadable date is filled with the median."""
    seconds = dates.parse(col, layout)
    present = seconds[~np.isnan(seconds)]
    if present.size == 0:
        raise DataError(f"feature '{name}' has no dates in the training rows", column=name)
    fill = float(np.median(present))
    parts = dates.calendar(np.where(np.isnan(seconds), fill, seconds))
    kept = [p for p in dates.parts_for(present) if np.ptp(parts[p]) > 0]
    inputs, means, scales = [], [], []
    for part, form in dates.inputs(kept):
        values = dates.input_values(parts, part, form)
        std = float(values.std())
        inputs.append([part, form])
        means.append(float(values.mean()))
        scales.append(std if std > 1e-12 else 1.0)
    item: dict[str, Any] = {"name": name, "kind": "datetime", "layout": layout, "fill": fill, "inputs": inputs,
                            "mean": means, "scale": scales}
    if encoding.missing_indicators and present.size < seconds.size:
        item["missing_indicator"] = True
    return item


def _input_width(f: dict[str, Any]) -> int:
    if f["kind"] == "categorical":
        return len(f["categories"])
    if f["kind"] == "datetime":
        return len(f["inputs"]) + bool(f.get("missing_indicator"))
    return 1 + bool(f.get("missing_indicator")) + max(len(f.get("bins", [])) - 1, 0)


def transform(table: pa.Table, params: dict[str, Any]) -> NDArray[np.float32]:
    """Apply fitted preprocessing: a float32 matrix, one column per number, one per category."""
    n = table.num_rows
    X = np.zeros((n, params["n_inputs"]), dtype=np.float32)
    j = 0
    for f in params["features"]:
        col = table.column(f["name"])
        if f["kind"] == "categorical":
            cats = pa.array(f["categories"], pa.string())
            strings = pc.fill_null(pc.cast(col, pa.string()), f["fill"])
            # index_in gives null for a category never seen in training: that row's one-hot stays all zeros.
            idx = pc.index_in(strings, value_set=cats).to_numpy(zero_copy_only=False)
            idx = np.asarray(_nulls_to_minus_one(idx), dtype=np.int64)
            rows = np.nonzero(idx >= 0)[0]
            X[rows, j + idx[rows]] = 1.0
            j += len(f["categories"])
        elif f["kind"] == "datetime":
            seconds = dates.parse(col, f["layout"])
            missing = np.isnan(seconds)
            parts = dates.calendar(np.where(missing, f["fill"], seconds))
            for (part, form), mean, scale in zip(f["inputs"], f["mean"], f["scale"], strict=True):
                X[:, j] = (dates.input_values(parts, part, form) - mean) / scale
                j += 1
            if f.get("missing_indicator"):
                X[:, j] = missing
                j += 1
        else:
            values = _numeric(col)
            missing = np.isnan(values)
            values = np.where(missing, f["fill"], values)
            X[:, j] = (values - f["mean"]) / f["scale"]
            j += 1
            if f.get("missing_indicator"):
                X[:, j] = missing
                j += 1
            if "bins" in f:
                edges = np.asarray(f["bins"])
                width = np.diff(edges)
                X[:, j:j + len(width)] = np.clip((values[:, None] - edges[None, :-1]) / width[None, :], 0.0, 1.0)
                j += len(width)
    return X


def _nulls_to_minus_one(idx: NDArray[Any]) -> NDArray[np.integer]:
    """index_in's nulls arrive as NaN (float) or None (object): map them to -1."""
    if idx.dtype == object:
        return np.array([-1 if v is None else v for v in idx], dtype=np.int64)
    if np.issubdtype(idx.dtype, np.floating):
        return np.where(np.isnan(idx), -1, idx).astype(np.int64)
    return idx


def fit_target(col: pa.ChunkedArray, task: str) -> dict[str, Any]:
    """Label list of a classification target."""
    values = col.drop_null()
    if pa.types.is_floating(col.type):
        values = _integral(values)
    labels = sorted(pc.unique(values).to_pylist(), key=lambda v: (str(type(v)), v))
    return {"task": task, "labels": labels}


def fit_regression_targets(table: pa.Table, names: list[str]) -> dict[str, Any]:
    """Mean and scale of each regression target, for standardisation; a target with nothing to learn is refused."""
    means, scales = [], []
    for name in names:
        values = _numeric(table.column(name))
        finite = values[~np.isnan(values)]
        if finite.size < 2:
            raise DataError(f"target '{name}' has a value in {finite.size} row(s) only; regression needs at least 2 "
                            "rows with a target (rows where it is missing or infinite are dropped)", column=name)
        if finite.min() == finite.max():
            raise DataError(f"target '{name}' has the same value ({finite[0]:g}) in every row; there is nothing to "
                            "learn: choose a target that varies", column=name)
        std = float(finite.std())
        means.append(float(finite.mean()))
        scales.append(std if std > 1e-12 else 1.0)
    return {"task": "regression", "names": names, "mean": means, "scale": scales}


def encode_regression(table: pa.Table, target: dict[str, Any]) -> NDArray[np.float64]:
    """[n, k] standardised targets, NaN where missing."""
    cols = [_numeric(table.column(n)) for n in target["names"]]
    mean, scale = np.asarray(target["mean"], dtype=np.float64), np.asarray(target["scale"], dtype=np.float64)
    return (np.stack(cols, axis=1) - mean) / scale


def _integral(values: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        return pc.cast(values, pa.int64())
    except pa.ArrowInvalid:
        raise DataError("the target holds fractional numbers, which cannot be class labels; "
                        "use task 'regression'") from None


def encode_target(col: pa.ChunkedArray, target: dict[str, Any]) -> NDArray[np.integer]:
    """Class indices (int64), -1 where missing."""
    values = _integral(col) if pa.types.is_floating(col.type) else col
    idx = pc.index_in(values, value_set=pa.array(target["labels"], values.type)).to_numpy(zero_copy_only=False)
    return _nulls_to_minus_one(idx)


def decode_regression(values: NDArray[np.float64], target: dict[str, Any]) -> NDArray[np.float64]:
    return values * np.asarray(target["scale"], dtype=np.float64) + np.asarray(target["mean"], dtype=np.float64)


def class_weights(y: NDArray[np.integer], labels: list[Any], spec: ClassWeights) -> list[float] | None:
    """Per-class loss weights: None, 'balanced' (n / (k · count)), or {label: weight}."""
    if spec is None:
        return None
    k = len(labels)
    if spec == "balanced":
        counts = np.bincount(y, minlength=k).astype(np.float64)
        balanced: list[float] = (len(y) / (k * np.maximum(counts, 1))).tolist()
        return balanced
    by_name = {str(label): i for i, label in enumerate(labels)}
    unknown = [name for name in spec if name not in by_name]
    if unknown:
        raise DataError(f"class_weights names label(s) {unknown} that the target does not have; labels: "
                        f"{[str(label) for label in labels]}")
    weights = [1.0] * k
    for name, w in spec.items():
        weights[by_name[name]] = float(w)
    return weights


@dataclass
class Split:
    train: NDArray[np.intp]
    validation: NDArray[np.intp]
    info: dict[str, Any] = field(default_factory=dict)


def split_rows(n: int, fraction: float, seed: int, strata: NDArray[Any] | None = None) -> Split:
    """Seeded train/validation split, stratified by class when `strata` is given."""
    rng = np.random.default_rng(seed)
    if fraction <= 0 or n < 2:
        return Split(train=np.arange(n), validation=np.arange(0))
    if strata is None:
        perm = rng.permutation(n)
        k = min(max(1, round(n * fraction)), n - 1)
        return Split(train=np.sort(perm[k:]), validation=np.sort(perm[:k]))
    train: list[NDArray[np.intp]] = []
    val: list[NDArray[np.intp]] = []
    for cls in np.unique(strata):
        rows = np.nonzero(strata == cls)[0]
        rows = rows[rng.permutation(rows.size)]
        k = round(rows.size * fraction) if rows.size > 1 else 0
        val.append(rows[:k])
        train.append(rows[k:])
    return Split(train=np.sort(np.concatenate(train)), validation=np.sort(np.concatenate(val)))


# Record indexes a fault names: enough to find the pattern, and an answer that stays short for 10,000 records.
SHOWN_RECORDS = 5
SHOWN_FAULTS = 5  # faults the one-line summary spells out; the exception's `faults` has every one


@dataclass
class RecordFault:
    """One kind of fault in one column, across the records that have it: the first few by index, and how many."""

    column: str
    problem: str  # after "column 'x' ", e.g. "expects a number"
    value: str | None  # the first offending value as shown, e.g. "'wide'"
    advice: str | None  # what to send instead, where the problem alone does not say
    records: list[int]
    count: int

    def message(self, n_records: int) -> str:
        """The fault as a sentence: the one record, or the records (the first SHOWN_RECORDS) that have it."""
        first = self.records[0]
        if self.count == 1:
            text = f"record {first}: column '{self.column}' {self.problem}"
            if self.value is not None:
                text += f", got {self.value}"
        else:
            if self.count == n_records:
                where = f"all {n_records} records"
            else:
                shown = [str(i) for i in self.records]
                rest = self.count - len(shown)
                listed = (", ".join(shown) + f" and {rest} more" if rest
                          else ", ".join(shown[:-1]) + " and " + shown[-1])
                where = f"records {listed} (of {n_records})"
            text = f"column '{self.column}' {self.problem} in {where}"
            if self.value is not None:
                text += f"; record {first} has {self.value}"
        return text if self.advice is None else f"{text}; {self.advice}"


class RecordsError(DataError):
    """Every fault found in predict-time records, one per column and kind of fault, in column order."""

    def __init__(self, faults: list[RecordFault], n_records: int) -> None:
        messages = [f.message(n_records) for f in faults]
        if len(messages) == 1:
            summary = messages[0]
        else:
            listed = "; ".join(f"({i}) {m}" for i, m in enumerate(messages[:SHOWN_FAULTS], 1))
            more = len(messages) - SHOWN_FAULTS
            summary = f"{len(messages)} problems in the records: {listed}" + (f"; and {more} more" if more > 0 else "")
        super().__init__(summary, column=faults[0].column)
        self.faults = faults
        self.n_records = n_records


class _Faults:
    """Collects faults while the records are read, so that one answer names all of them."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], RecordFault] = {}

    def add(self, record: int, column: str, problem: str, value: str | None = None,
            advice: str | None = None) -> None:
        fault = self.found.get((column, problem))
        if fault is None:
            self.found[column, problem] = RecordFault(column, problem, value, advice, [record], 1)
            return
        fault.count += 1
        if len(fault.records) < SHOWN_RECORDS:
            fault.records.append(record)


def _json_kind(value: Any) -> str:
    return "an object" if isinstance(value, dict) else "a list"


def records_to_table(records: list[dict[str, Any]], feature_params: list[dict[str, Any]]) -> pa.Table:
    """Predict-time records → a table with the trained features' types; RecordsError names every column at fault
    (and the records)."""
    arrays: dict[str, pa.Array] = {}
    faults = _Faults()
    for f in feature_params:
        name, kind = f["name"], f["kind"]
        values: list[str | float | None] = []
        dated: list[int] = []  # records with a date to read (kind datetime)
        for i, rec in enumerate(records):
            if name not in rec:
                faults.add(i, name, "is missing")
                continue
            v = rec[name]
            if v is None:
                values.append(None)
            elif kind == "datetime":
                if isinstance(v, str):
                    values.append(v)
                    dated.append(i)
                else:
                    faults.add(i, name, f"expects a date as text like '{dates.example_value(f['layout'])}' "
                               f"({dates.describe(f['layout'])})", quote_value(v))
            elif kind == "categorical":
                if isinstance(v, (dict, list)):
                    faults.add(i, name, "expects a text category", _json_kind(v))
                elif isinstance(v, float) and not math.isfinite(v):
                    faults.add(i, name, "is NaN or infinite", advice="send null for a missing value")
                else:
                    values.append(str(v).lower() if isinstance(v, bool) else str(v))
            elif kind == "boolean":
                if isinstance(v, bool) or (isinstance(v, (int, float)) and v in (0, 1)):
                    values.append(float(v))
                else:
                    faults.add(i, name, "expects true or false", quote_value(v))
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                faults.add(i, name, "expects a number", quote_value(v))
            else:
                try:
                    number = float(v)
                except OverflowError:
                    faults.add(i, name, "is out of range for a number", f"a {len(str(v))}-digit integer",
                               advice="send a value within ±1.8e308")
                    continue
                if math.isfinite(number):
                    values.append(number)
                else:
                    faults.add(i, name, "is NaN or infinite",
                               advice="send null for a missing value (it is filled in as in training)")
        if kind == "datetime" and dated:
            text = pa.array([records[i][name] for i in dated], pa.string())
            for i, seconds in zip(dated, dates.parse(text, f["layout"]), strict=True):
                if math.isnan(seconds):
                    faults.add(i, name, f"expects a date like '{dates.example_value(f['layout'])}' "
                               f"({dates.describe(f['layout'])})", quote_value(records[i][name]))
        if not faults.found:
            arrays[name] = pa.array(values, pa.string() if kind in ("categorical", "datetime") else pa.float64())
    if faults.found:
        raise RecordsError(list(faults.found.values()), len(records))
    return pa.table(arrays) if arrays else pa.table({})
