"""After upload: a column's kind set by the user, and what a job's columns and target are checked for at submit
(classes too rare for the split, targets of the wrong sort, leaking features, rows without a target).

Pure pyarrow + numpy. Each check returns warnings ({code, column, message}) or raises DataError for what cannot
train at all.
"""

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from service.training import dates
from service.training.ingest import DataError, quote_value, warning

# Every warning code a job can carry (the README lists them).
JOB_WARNINGS = ("column_left_out", "missing_target", "rare_class", "target_looks_categorical",
                "target_looks_continuous", "many_classes", "target_leak")

KINDS = ("numeric", "categorical", "boolean", "datetime", "text", "identifier")
# Kinds a job leaves out unless it lists the column in features.
LEFT_OUT_KINDS = ("identifier", "text")
# A regression target with at most this many distinct integer values may be classes.
FEW_VALUES = 10
# A classification target with more classes than this (and than a tenth of its rows) is likely a number.
MANY_CLASSES = 50
# Leakage is looked for on at most this many rows and feature columns (the first ones).
LEAK_ROWS = 10_000
LEAK_COLUMNS = 1_000
LEAK_MIN_ROWS = 30
LEAK_CORRELATION = 0.9999


def _is_number(dtype: str) -> bool:
    return dtype.startswith(("int", "uint", "float", "double", "halffloat"))


def set_kind(summary: dict[str, Any], kind: str, column: pa.ChunkedArray | None) -> dict[str, Any]:
    """The column summary with `kind` set by the user, or DataError saying which kinds the column can take.
    `column` (the stored values) is needed only to make a text column datetime."""
    name, dtype, current = summary["name"], summary["dtype"], summary["kind"]
    if kind not in KINDS:
        raise DataError(f"'{kind}' is not a column kind; use one of {', '.join(KINDS)}", column=name)
    if current == "tensor":
        raise DataError(f"'{name}' is an array (.npz) column; its kind cannot change", column=name)
    inferred = summary.get("inferred_kind") or current
    out = {k: v for k, v in summary.items() if k not in ("datetime_layout", "datetime_ambiguous")}
    if kind == inferred:
        out.pop("inferred_kind", None)
        if summary.get("inferred_layout"):
            out["datetime_layout"] = out.pop("inferred_layout")
        out["kind"], out["reason"] = kind, summary.get("inferred_reason", summary.get("reason"))
        out.pop("inferred_reason", None)
        return out
    if kind == "numeric" and not (_is_number(dtype) or dtype == "bool"):
        raise DataError(f"'{name}' holds text, not numbers, so it cannot be numeric; it can be categorical, "
                        "identifier, text or datetime", column=name)
    if kind == "boolean":
        top = {str(t["value"]).lower() for t in summary.get("stats", {}).get("top", [])}
        if not (dtype == "bool" or (_is_number(dtype) and summary["n_unique"] <= 2 and top <= {"0", "1", "0.0",
                                                                                              "1.0"})):
            raise DataError(f"'{name}' is not true/false or 0/1 in every row, so it cannot be boolean; it can be "
                            "categorical", column=name)
    layout = None
    if kind == "datetime":
        if _is_number(dtype) or dtype == "bool" or column is None:
            raise DataError(f"'{name}' holds numbers, not dates written as text, so it cannot be datetime",
                            column=name)
        found = dates.detect(pc.cast(column, pa.string()))
        if found is None:
            sample = column.drop_null().slice(0, 1).to_pylist()
            accepted = ", ".join(layout.example for layout in dates.LAYOUTS.values())
            raise DataError(f"'{name}' has values that are not dates"
                            + (f" such as {quote_value(sample[0])}" if sample else "")
                            + f"; a datetime column writes at least {dates.MIN_PARSED:.0%} of its values in one of: "
                            f"{accepted} (a time HH:MM[:SS] and a zone may follow)", column=name)
        layout = found.layout
    out.setdefault("inferred_kind", inferred)
    out.setdefault("inferred_reason", summary.get("reason"))
    if summary.get("datetime_layout"):
        out.setdefault("inferred_layout", summary["datetime_layout"])
    out["kind"], out["reason"] = kind, f"{kind}: set by the user (inferred: {inferred})"
    if layout is not None:
        out["datetime_layout"] = layout
    return out


def left_out(columns: list[dict[str, Any]], names: list[str], n_rows: int,
             listed: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """The features a job trains on out of `names`, and a warning for each one left out: identifiers and free text
    unless the job `listed` its features, and (always) columns without values or with one value in every row."""
    by_name = {c["name"]: c for c in columns}
    kept: list[str] = []
    found: list[dict[str, Any]] = []
    for name in names:
        c = by_name[name]
        if c["kind"] == "tensor":
            kept.append(name)
        elif c.get("n_missing", 0) >= n_rows:
            found.append(warning("column_left_out", name, f"'{name}' has no values; it is left out"))
        elif n_rows > 1 and c.get("n_unique", 0) <= 1 and c.get("n_missing", 0) == 0:
            found.append(warning("column_left_out", name, f"'{name}' has the same value in every row; it is left "
                                 "out"))
        elif c["kind"] in LEFT_OUT_KINDS and not listed:
            found.append(warning("column_left_out", name, f"'{name}' is of kind {c['kind']} ({c.get('reason')}); "
                                 "it is left out: list it in features to train on it (as categories), or set its "
                                 "kind"))
        else:
            kept.append(name)
    return kept, found


def target_checks(target: pa.ChunkedArray, name: str, task: str, *, holdout: float) -> list[dict[str, Any]]:
    """Rows without a target, classes too rare for the split, and targets that look like the other task.
    `holdout` is the smallest share of a class's rows held out (validation, test or one fold)."""
    found: list[dict[str, Any]] = []
    present = target.drop_null()
    if pa.types.is_floating(target.type):
        present = present.filter(pc.is_finite(present))
    n_missing = len(target) - len(present)
    if n_missing:
        found.append(warning("missing_target", name, f"{n_missing} of {len(target)} rows have no value in '{name}'; "
                             "they are left out of training and scoring"))
    if len(present) == 0:
        raise DataError(f"target '{name}' has no values", column=name)
    if task == "classification":
        if pa.types.is_floating(target.type):
            values = present.to_numpy()
            fractional = values[values != np.round(values)]
            if fractional.size:
                raise DataError(f"target '{name}' holds fractional numbers (such as {fractional[0]:g}), which cannot "
                                "be class labels; use task 'regression'", column=name)
        counts = pc.value_counts(present)
        labels, sizes = counts.field("values").to_pylist(), np.asarray(counts.field("counts").to_pylist())
        n = len(present)
        if len(labels) == n and n >= 10:
            raise DataError(f"target '{name}' has {n} distinct values in {n} rows: every row is its own class, so "
                            "there is nothing to learn" + ("; use task 'regression' for a number"
                                                           if _is_number(str(target.type)) else ""), column=name)
        needed = _rows_to_hold_out(holdout)
        rare = [(label, int(size)) for label, size in zip(labels, sizes, strict=True) if size < needed]
        rare.sort(key=lambda ls: (ls[1], str(ls[0])))
        for label, size in rare[:20]:
            found.append(warning("rare_class", name, f"class {quote_value(label)} of '{name}' has {size} row(s); "
                                 f"a class needs at least {needed} to be held out for validation and testing, so "
                                 "this one is trained on but never scored (its figures are missing from the report)"))
        if len(rare) > 20:
            found.append(warning("rare_class", name, f"and {len(rare) - 20} more classes with too few rows"))
        if len(labels) > MANY_CLASSES and len(labels) > n / 10:
            found.append(warning("target_looks_continuous", name, f"target '{name}' has {len(labels)} classes in "
                                 f"{n} rows; if it is a quantity, use task 'regression'"))
    elif _is_number(str(target.type)):
        values = present.to_numpy().astype(np.float64)
        distinct = np.unique(values)
        if distinct.size <= FEW_VALUES and np.all(distinct == np.round(distinct)):
            shown = ", ".join(f"{v:g}" for v in distinct)
            found.append(warning("target_looks_categorical", name, f"target '{name}' has {distinct.size} distinct "
                                 f"whole-number values ({shown}); if these are classes, use task 'classification'"))
    return found


def _rows_to_hold_out(fraction: float) -> int:
    """The fewest rows of a class for a stratified split to hold one out (round(rows × fraction) ≥ 1)."""
    if fraction <= 0:
        return 1
    n = max(2, math.floor(0.5 / fraction))
    while round(n * fraction) < 1:  # Python's round: half to even, as the split rounds
        n += 1
    return n


def _codes(col: pa.ChunkedArray) -> NDArray[np.int64]:
    """Each value's index among the column's distinct values (as text), -1 where missing."""
    text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
    encoded = pc.dictionary_encode(text.combine_chunks()).indices
    return np.asarray(pc.fill_null(encoded, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _rank(values: NDArray[np.float64]) -> NDArray[np.float64]:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size)
    return ranks


def _correlation(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def leaks(sample: pa.Table, target: str, features: list[str], task: str) -> list[dict[str, Any]]:
    """Features that give the target away: equal to it, a one-to-one relabelling of its classes, or (regression)
    a linear or monotone function of it. Looked for on the sample's rows (the first LEAK_ROWS)."""
    found: list[dict[str, Any]] = []
    t_col = sample.column(target)
    t_codes = _codes(t_col)
    numeric_target = task == "regression" and _is_number(str(t_col.type))
    t_values = (pc.cast(t_col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
                if numeric_target else None)
    for name in features[:LEAK_COLUMNS]:
        col = sample.column(name)
        f_codes = _codes(col)
        both = (t_codes >= 0) & (f_codes >= 0)
        if both.sum() < LEAK_MIN_ROWS:
            continue
        if t_values is not None:
            if not _is_number(str(col.type)):
                continue
            f_values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
            ok = both & np.isfinite(f_values) & np.isfinite(t_values)
            if ok.sum() < LEAK_MIN_ROWS:
                continue
            x, y = f_values[ok], t_values[ok]
            r = max(abs(_correlation(x, y)), abs(_correlation(_rank(x), _rank(y))))
            if r >= LEAK_CORRELATION:
                how = "equal to" if np.array_equal(x, y) else f"a function of (correlation {r:.4f} with)"
                found.append(warning("target_leak", name, f"feature '{name}' is {how} the target '{target}': a "
                                     "model would learn it and fail on new rows where it is unknown; leave it out "
                                     "of features unless it is truly known before the target"))
            continue
        f, t = f_codes[both], t_codes[both]
        n_f, n_t = np.unique(f).size, np.unique(t).size
        n_pairs = np.unique(f * (t.max() + 1) + t).size
        if n_t >= 2 and n_f == n_t == n_pairs:
            found.append(warning("target_leak", name, f"feature '{name}' matches the target '{target}' one to one "
                                 f"(each of its {n_f} values goes with one class): a model would learn it and fail "
                                 "on new rows where it is unknown; leave it out of features unless it is truly known "
                                 "before the target"))
    return found
