"""Parsing uploads, schema inference, and preprocessing fitted as JSON-able parameters.

Pure pyarrow + numpy: no database, no HTTP.
"""

import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SNIFF_BYTES = 64 * 1024
# The streaming CSV reader holds about a dozen blocks' worth of buffers: 1 MiB blocks keep an upload's peak
# memory near 20 MB above the process's own (8 MiB blocks: about 120 MB) at the same speed.
CSV_BLOCK_BYTES = 1 << 20
HEADER_SCAN_BYTES = 64 << 20  # how far the column count looks for the end of the header row
# Rows per Parquet row group: one per CSV block would make thousands of tiny groups, slow to read back.
ROW_GROUP_ROWS = 65_536
DELIMITERS = (",", "\t", ";", "|")
# An integer target with at most this many distinct values is taken for class labels.
MAX_CLASSES_FOR_INT_TARGET = 20
TOP_VALUES = 5
# A column summary quotes its most frequent values; a longer text is cut, so a 1 MB cell cannot bloat every
# description and listing of the data set (the stored data keep it whole).
TOP_VALUE_CHARS = 100
# Error messages quote a rejected value up to this length.
QUOTE_CHARS = 60


class DataError(ValueError):
    """The data cannot be used as given; the message says what to change."""

    def __init__(self, message: str, *, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass
class IngestResult:
    format: str
    n_rows: int
    columns: list[dict[str, Any]]


# ---------------------------------------------------------------- ingest


def sniff_format(path: Path) -> tuple[str, str | None]:
    """(format, delimiter) from the file's content, whatever its name says."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head:
        raise DataError("the file is empty; upload a CSV or TSV with a header row, or a Parquet file")
    if head.startswith(b"PAR1"):
        return "parquet", None
    if head.startswith(b"PK\x03\x04"):
        return "npz", None
    if b"\x00" in head:
        raise DataError("the file is binary, not CSV, TSV or Parquet; upload a UTF-8 text table or Parquet")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is fine; anything earlier, or in a file shorter than
        # the window, is not UTF-8.
        if exc.start < len(head) - 4 or len(head) < SNIFF_BYTES:
            raise DataError(
                f"the file is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8 and upload again"
            ) from None
        text = head[: exc.start].decode("utf-8")
    text = text.lstrip("\ufeff")
    header = text.splitlines()[0] if text.strip() else ""
    if not header.strip():
        raise DataError("the first line is empty; the first line must be the header row with the column names")
    counts = {d: header.count(d) for d in DELIMITERS}
    delimiter = max(DELIMITERS, key=lambda d: counts[d])
    if counts[delimiter] == 0:
        delimiter = ","
    return ("tsv" if delimiter == "\t" else "csv"), delimiter


_COMMA_DECIMAL = re.compile(r"^[+-]?\d*,\d+$")
_DOT_DECIMAL = re.compile(r"^[+-]?\d*\.\d+$")


def decimal_point(path: Path, delimiter: str) -> str:
    """',' when the file writes its numbers with a decimal comma (as European spreadsheets export them, with ';' as
    the delimiter), else '.': decided by which form the first rows' fields take more often."""
    if delimiter == ",":
        return "."
    with open(path, "rb") as fh:
        lines = fh.read(SNIFF_BYTES).decode("utf-8", errors="ignore").splitlines()[1:-1]
    comma = dot = 0
    for line in lines:
        for cell in line.split(delimiter):
            cell = cell.strip().strip('"')
            comma += bool(_COMMA_DECIMAL.match(cell))
            dot += bool(_DOT_DECIMAL.match(cell))
    return "," if comma > dot else "."


def csv_convert_options(path: Path, delimiter: str, column_types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
    """How CSV text becomes values, shared by uploads and batch scoring: the file's decimal point, the usual
    missing-value spellings ('', NA, N/A, NaN, null, ...) as null."""
    return pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types,
                                decimal_point=decimal_point(path, delimiter))


def _normalise_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Keep numbers, booleans and strings; dates and other scalars become strings."""
    arrays, fields = [], []
    for f, arr in zip(batch.schema, batch.columns, strict=True):
        t = f.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            raise DataError(
                f"column '{f.name}' holds bytes that are not UTF-8 text; save the file as UTF-8 and upload again",
                column=f.name,
            )
        if pa.types.is_nested(t):
            raise DataError(f"column '{f.name}' is nested ({t}); only flat columns are accepted", column=f.name)
        if pa.types.is_null(t):
            arr = arr.cast(pa.float64())
        elif pa.types.is_dictionary(t) or pa.types.is_large_string(t):
            arr = arr.cast(pa.string())
        elif pa.types.is_decimal(t) or pa.types.is_float16(t):
            arr = arr.cast(pa.float64())
        elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                  or pa.types.is_string(t)):
            arr = arr.cast(pa.string())
        if pa.types.is_string(arr.type) and pc.any(pc.match_substring(arr, "\x00")).as_py():
            raise DataError(f"column '{f.name}' holds a NUL byte (\\0); text values cannot contain NUL bytes: "
                            "remove them and upload again", column=f.name)
        arrays.append(arr)
        fields.append(pa.field(f.name, arr.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _check_names(names: list[str], max_columns: int) -> None:
    if len(names) > max_columns:
        raise DataError(f"the file has {len(names)} columns; at most {max_columns} are accepted")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name.strip():
            raise DataError(f"column {i + 1} has an empty name; every column needs a name in the header row")
        if name in seen:
            raise DataError(f"column name '{name}' appears more than once; column names must be unique",
                            column=name)
        seen.add(name)


_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+)")


def _csv_batches(path: Path, delimiter: str, column_types: dict[str, pa.DataType]):
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=csv_convert_options(path, delimiter, column_types),
    )
    return reader.schema.names, reader


def _write_batches(names: list[str], batches, dest: Path, max_columns: int, max_rows: int | None) -> int:
    _check_names(names, max_columns)
    writer = None
    n_rows = 0
    pending: list[pa.RecordBatch] = []  # small CSV blocks gathered into row groups of ROW_GROUP_ROWS
    try:
        for batch in batches:
            batch = _normalise_batch(batch)
            if writer is None:
                writer = pq.ParquetWriter(dest, batch.schema, compression="zstd")
            elif batch.schema != writer.schema:
                batch = batch.cast(writer.schema)
            pending.append(batch)
            n_rows += batch.num_rows
            if max_rows is not None and n_rows > max_rows:
                raise DataError(f"the file has more than {max_rows:,} rows, the most this server accepts")
            if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending))
                pending = []
        if pending:
            writer.write_table(pa.Table.from_batches(pending))
    finally:
        if writer is not None:
            writer.close()
    return n_rows


def _header_fields(path: Path, delimiter: str) -> int | None:
    """Fields in the header row by a plain count, or None where quotes could hide delimiters."""
    header = b""
    with open(path, "rb") as fh:
        while b"\n" not in header and len(header) < HEADER_SCAN_BYTES:
            chunk = fh.read(SNIFF_BYTES)
            if not chunk:
                break
            header += chunk
    header = header.split(b"\n", 1)[0]
    return None if b'"' in header else header.count(delimiter.encode()) + 1


def _write_csv(path: Path, delimiter: str, dest: Path, max_columns: int, max_rows: int | None) -> int:
    # Count a very wide header before pyarrow builds a reader with a column per field (seconds per 100 000).
    width = _header_fields(path, delimiter)
    if width is not None and width > max_columns:
        raise DataError(f"the file has {width} columns; at most {max_columns} are accepted")
    # pyarrow infers a column's type from the first block; a later value that does not fit
    # (e.g. "x" in an int column) is retried with a wider type for that column: int → float → string.
    column_types: dict[str, pa.DataType] = {}
    for _ in range(2 * max_columns + 2):
        try:
            names, reader = _csv_batches(path, delimiter, column_types)
            return _write_batches(names, reader, dest, max_columns, max_rows)
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            m = _CONVERSION.search(msg)
            if not m:
                if "Expected" in msg and "columns" in msg:
                    raise DataError(
                        "ragged rows: " + msg.replace("CSV parse error: ", "")
                        + "; every row needs as many fields as the header"
                    ) from None
                raise DataError(f"the file could not be parsed as {('TSV' if delimiter == chr(9) else 'CSV')}: "
                                f"{msg}") from None
            name = names[int(m.group(1))]
            current = m.group(2)
            column_types[name] = pa.float64() if current.startswith(("int", "uint", "null")) else pa.string()
            dest.unlink(missing_ok=True)
    raise DataError("the file's column types could not be determined")


def _write_parquet(path: Path, dest: Path, max_columns: int, max_rows: int | None) -> int:
    try:
        src = pq.ParquetFile(path)
        names = src.schema_arrow.names
        return _write_batches(names, src.iter_batches(batch_size=65536), dest, max_columns, max_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"the file looks like Parquet but could not be read: {exc}") from None


def summarise_column(name: str, col: pa.ChunkedArray) -> dict[str, Any]:
    """Kind, dtype, missing and distinct counts, and summary stats of one column."""
    t = col.type
    n_missing = col.null_count
    info: dict[str, Any] = {"name": name, "dtype": str(t)}
    if pa.types.is_boolean(t):
        info["kind"] = "boolean"
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        info["kind"] = "numeric"
    else:
        info["kind"] = "categorical"
    stats: dict[str, Any] = {}
    if info["kind"] == "numeric":
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        n_missing = int(np.isnan(values).sum())
        stats["n_infinite"] = int(np.isinf(values).sum())
        if finite.size:
            stats.update(min=float(finite.min()), max=float(finite.max()),
                         mean=float(finite.mean()), std=float(finite.std()))
    if info["kind"] in ("categorical", "boolean") or (pa.types.is_integer(t)):
        counts = pc.value_counts(col.drop_null())
        if len(counts):
            pairs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                               strict=True), key=lambda vc: (-vc[1], str(vc[0])))
            stats["top"] = [{"value": _shorten(v), "count": c} for v, c in pairs[:TOP_VALUES]]
    info["n_missing"] = int(n_missing)
    info["n_unique"] = _count_distinct(col)
    info["stats"] = _finite(stats)
    return info


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > TOP_VALUE_CHARS:
        return value[:TOP_VALUE_CHARS] + f"… ({len(value)} characters)"
    return value


def _quote(value: Any) -> str:
    """repr() of a rejected value, cut short: a hostile value is never echoed back whole."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}… ({len(text)} characters)"


def _count_distinct(col: pa.ChunkedArray) -> int:
    """Distinct non-null values. Numbers by sorting their bit patterns (so -0.0 and 0.0 differ and NaNs are one
    value, as in Arrow's count_distinct): Arrow's hash kernel keeps about 100 MB per half-million rows when it
    runs in a request's worker thread, and takes longer."""
    present = col.drop_null()
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = present.to_numpy()
        if values.dtype.kind == "f":
            values = np.where(np.isnan(values), np.array(np.nan, values.dtype), values).view(f"i{values.itemsize}")
        ordered = np.sort(values)
        return int(ordered.size and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))
    return int(pc.count_distinct(present).as_py())


def _finite(obj: Any) -> Any:
    """JSON cannot hold NaN or infinity: such figures become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def ingest(src: Path, dest: Path, *, max_columns: int, max_rows: int | None = None,
           max_array_bytes: int | None = None) -> IngestResult:
    """Parse an uploaded file, write it to `dest` as Parquet, and describe its columns."""
    fmt, delimiter = sniff_format(src)
    if fmt == "npz":
        return ingest_arrays(src, dest.with_suffix(".npz"), max_rows=max_rows, max_array_bytes=max_array_bytes)
    try:
        if fmt == "parquet":
            n_rows = _write_parquet(src, dest, max_columns, max_rows)
        else:
            n_rows = _write_csv(src, delimiter, dest, max_columns, max_rows)
        if n_rows == 0:
            raise DataError("the file has a header but no data rows")
        table = pq.ParquetFile(dest)
        columns = []
        for name in table.schema_arrow.names:
            columns.append(summarise_column(name, pq.read_table(dest, columns=[name]).column(0)))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return IngestResult(format=fmt, n_rows=n_rows, columns=columns)


ARRAY_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bool")


def _check_unpacked_size(src: Path, max_bytes: int) -> None:
    """Refuse an .npz whose arrays would unpack to more than max_bytes (a small file can declare gigabytes)."""
    try:
        with zipfile.ZipFile(src) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"the file looks like .npz but could not be read: {exc}") from None
    if unpacked > max_bytes:
        raise DataError(f"the .npz unpacks to {unpacked:,} bytes; at most {max_bytes:,} are accepted", column="X")


def ingest_arrays(src: Path, dest: Path, *, max_rows: int | None = None,
                  max_array_bytes: int | None = None) -> IngestResult:
    """An .npz with `X` ([N, C, H, W], [N, H, W] or [N, D]) and optionally `y` ([N]); stored again as .npz.

    Loaded with allow_pickle=False: object arrays (which would need unpickling) are refused.
    """
    if max_array_bytes is not None:
        _check_unpacked_size(src, max_array_bytes)
    try:
        with np.load(src, allow_pickle=False) as npz:
            names = set(npz.files)
            if "X" not in names:
                raise DataError(f"the .npz needs an array named 'X' (found: {', '.join(sorted(names)) or 'none'})",
                                column="X")
            X = npz["X"]
            y = npz["y"] if "y" in names else None
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"the .npz could not be read safely ({exc}); save plain numeric or text arrays") from None
    except Exception as exc:
        raise DataError(f"the file looks like .npz but could not be read: {exc}") from None
    if X.ndim < 2 or X.ndim > 4 or X.shape[0] == 0 or 0 in X.shape:
        raise DataError(f"'X' must be shaped [N, D], [N, H, W] or [N, C, H, W] with N > 0; got {list(X.shape)}",
                        column="X")
    if max_rows is not None and X.shape[0] > max_rows:
        raise DataError(f"'X' has {X.shape[0]:,} rows; at most {max_rows:,} are accepted", column="X")
    if str(X.dtype) not in ARRAY_DTYPES:
        raise DataError(f"'X' has dtype {X.dtype}; numeric arrays only", column="X")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise DataError("'X' holds NaN or infinite values", column="X")
    columns = [{"name": "X", "kind": "tensor", "dtype": str(X.dtype), "shape": list(X.shape[1:]), "n_missing": 0,
                "n_unique": 0, "stats": _finite({"min": float(X.min()), "max": float(X.max()),
                                                 "mean": float(X.mean()), "std": float(X.std())})}]
    arrays = {"X": X}
    if y is not None:
        if y.ndim != 1 or len(y) != len(X):
            raise DataError(f"'y' must be shaped [N] = [{len(X)}]; got {list(y.shape)}", column="y")
        if y.dtype.kind not in "biufU":
            raise DataError(f"'y' has dtype {y.dtype}; numbers or text only", column="y")
        arrays["y"] = y
        columns.append(summarise_column("y", pa.chunked_array([pa.array(y)])))
    tmp = dest.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, dest)
    return IngestResult(format="npz", n_rows=int(len(X)), columns=columns)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def preview(path: Path, n: int) -> list[dict[str, Any]]:
    """The first n rows as JSON-able records."""
    if path.suffix == ".npz":
        arrays = load_arrays(path)
        return _finite([{k: v[i].tolist() for k, v in arrays.items()} for i in range(min(n, len(arrays["X"])))])
    pf = pq.ParquetFile(path)
    rows: list[dict[str, Any]] = []
    for batch in pf.iter_batches(batch_size=n):
        rows = batch.slice(0, n).to_pylist()
        break
    return _finite(rows)


# ---------------------------------------------------------------- task and preprocessing


def infer_task(column: dict[str, Any]) -> str:
    """classification for strings, booleans and small-integer targets; regression for the rest."""
    if column["kind"] in ("categorical", "boolean"):
        return "classification"
    if column["dtype"].startswith(("int", "uint")) and column["n_unique"] <= MAX_CLASSES_FOR_INT_TARGET:
        return "classification"
    return "regression"


def load_columns(path: Path, names: list[str]) -> pa.Table:
    return pq.read_table(path, columns=names)


def _numeric(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


@dataclass(frozen=True)
class Encoding:
    """How columns become inputs beyond imputation, standardisation and one-hot (the single networks use none of
    it; the ensemble all of it)."""

    missing_indicators: bool = False  # a 0/1 "was missing" input for numeric columns with missing values
    bins: int = 0  # piecewise-linear quantile bins per numeric column (0: none)
    min_category_rows: int = 1  # levels in fewer training rows share the all-zero encoding of unseen levels


def fit_preprocessing(table: pa.Table, features: list[str], kinds: dict[str, str],
                      encoding: Encoding = Encoding()) -> dict[str, Any]:
    """Imputation, standardisation and one-hot categories (and what `encoding` adds), fitted on these (training)
    rows only."""
    out = []
    for name in features:
        col = table.column(name)
        if kinds[name] == "categorical":
            strings = pc.cast(col, pa.string()).drop_null()
            if len(strings) == 0:
                raise DataError(f"feature '{name}' has no values in the training rows", column=name)
            counts = pc.value_counts(strings)
            values = counts.field("values").to_pylist()
            freq = counts.field("counts").to_pylist()
            most = min(zip(values, freq, strict=True), key=lambda vc: (-vc[1], vc[0]))[0]
            # A level seen in fewer rows than min_category_rows cannot generalise (one seen once names its row,
            # like an identifier): such levels share the all-zero "other" encoding, as unseen levels do.
            kept = sorted(v for v, c in zip(values, freq, strict=True) if c >= encoding.min_category_rows)
            out.append({"name": name, "kind": "categorical", "categories": kept, "fill": most})
        else:
            values = _numeric(col)
            finite = values[~np.isnan(values)]
            if finite.size == 0:
                raise DataError(f"feature '{name}' has no numeric values in the training rows", column=name)
            median = float(np.median(finite))
            filled = np.where(np.isnan(values), median, values)
            std = float(filled.std())
            item = {"name": name, "kind": kinds[name], "fill": median, "mean": float(filled.mean()),
                    "scale": std if std > 1e-12 else 1.0}
            if encoding.missing_indicators and finite.size < values.size:
                item["missing_indicator"] = True
            if encoding.bins and kinds[name] == "numeric":
                # Piecewise-linear encoding (Gorishniy et al., "On embeddings for numerical features in tabular
                # deep learning", 2022): one input per quantile bin, 0 below it, 1 above it, linear inside, so
                # that a network can bend its answer at the data's own thresholds as a tree does.
                edges = np.unique(np.quantile(finite, np.linspace(0, 1, encoding.bins + 1)))
                if len(edges) >= 3:
                    item["bins"] = edges.tolist()
            out.append(item)
    return {"features": out, "n_inputs": sum(_input_width(f) for f in out)}


def _input_width(f: dict[str, Any]) -> int:
    if f["kind"] == "categorical":
        return len(f["categories"])
    return 1 + bool(f.get("missing_indicator")) + max(len(f.get("bins", [])) - 1, 0)


def transform(table: pa.Table, params: dict[str, Any]) -> np.ndarray:
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


def _nulls_to_minus_one(idx: np.ndarray) -> np.ndarray:
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


def encode_regression(table: pa.Table, target: dict[str, Any]) -> np.ndarray:
    """[n, k] standardised targets, NaN where missing."""
    cols = [_numeric(table.column(n)) for n in target["names"]]
    return (np.stack(cols, axis=1) - np.asarray(target["mean"])) / np.asarray(target["scale"])


def _integral(values):
    try:
        return pc.cast(values, pa.int64())
    except pa.ArrowInvalid:
        raise DataError("the target holds fractional numbers, which cannot be class labels; "
                        "use task 'regression'") from None


def encode_target(col: pa.ChunkedArray, target: dict[str, Any]) -> np.ndarray:
    """Class indices (int64), -1 where missing."""
    values = _integral(col) if pa.types.is_floating(col.type) else col
    idx = pc.index_in(values, value_set=pa.array(target["labels"], values.type)).to_numpy(zero_copy_only=False)
    return _nulls_to_minus_one(idx)


def decode_regression(values: np.ndarray, target: dict[str, Any]) -> np.ndarray:
    return values * np.asarray(target["scale"]) + np.asarray(target["mean"])


def class_weights(y: np.ndarray, labels: list[Any], spec: str | dict[str, float] | None) -> list[float] | None:
    """Per-class loss weights: None, 'balanced' (n / (k · count)), or {label: weight}."""
    if spec is None:
        return None
    k = len(labels)
    if spec == "balanced":
        counts = np.bincount(y, minlength=k).astype(np.float64)
        return (len(y) / (k * np.maximum(counts, 1))).tolist()
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
    train: np.ndarray
    validation: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def split_rows(n: int, fraction: float, seed: int, strata: np.ndarray | None = None) -> Split:
    """Seeded train/validation split, stratified by class when `strata` is given."""
    rng = np.random.default_rng(seed)
    if fraction <= 0 or n < 2:
        return Split(train=np.arange(n), validation=np.arange(0))
    if strata is None:
        perm = rng.permutation(n)
        k = min(max(1, round(n * fraction)), n - 1)
        return Split(train=np.sort(perm[k:]), validation=np.sort(perm[:k]))
    train, val = [], []
    for cls in np.unique(strata):
        rows = np.nonzero(strata == cls)[0]
        rows = rows[rng.permutation(rows.size)]
        k = round(rows.size * fraction) if rows.size > 1 else 0
        val.append(rows[:k])
        train.append(rows[k:])
    return Split(train=np.sort(np.concatenate(train)), validation=np.sort(np.concatenate(val)))


def records_to_table(records: list[dict[str, Any]], feature_params: list[dict[str, Any]]) -> pa.Table:
    """Predict-time records → a table with the trained features' types; errors name record and column."""
    arrays = {}
    for f in feature_params:
        name, kind = f["name"], f["kind"]
        values = []
        for i, rec in enumerate(records):
            if name not in rec:
                raise DataError(f"record {i}: column '{name}' is missing", column=name)
            v = rec[name]
            if v is None:
                values.append(None)
            elif kind == "categorical":
                if isinstance(v, (dict, list)):
                    raise DataError(f"record {i}: column '{name}' expects a text category, got {type(v).__name__}",
                                    column=name)
                if isinstance(v, float) and not math.isfinite(v):
                    raise DataError(f"record {i}: column '{name}' is NaN or infinite; send null for a missing value",
                                    column=name)
                values.append(str(v).lower() if isinstance(v, bool) else str(v))
            elif kind == "boolean":
                if isinstance(v, bool) or (isinstance(v, (int, float)) and v in (0, 1)):
                    values.append(float(v))
                else:
                    raise DataError(f"record {i}: column '{name}' expects true or false, got {_quote(v)}",
                                    column=name)
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DataError(f"record {i}: column '{name}' expects a number, got {_quote(v)}", column=name)
                try:
                    number = float(v)
                except OverflowError:
                    raise DataError(f"record {i}: column '{name}' is out of range for a number (a {len(str(v))}-digit "
                                    "integer); send a value within ±1.8e308", column=name) from None
                if not math.isfinite(number):
                    raise DataError(f"record {i}: column '{name}' is NaN or infinite; send null for a missing value "
                                    "(it is filled in as in training)", column=name)
                values.append(number)
        arrays[name] = pa.array(values, pa.string() if kind == "categorical" else pa.float64())
    return pa.table(arrays) if arrays else pa.table({})
