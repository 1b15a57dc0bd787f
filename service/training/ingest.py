"""Upload time: sniffing a file's format and CSV dialect, parsing it into Parquet (or checking an .npz), the
column summaries a data set shows, previews, and the task a target implies.

Pure pyarrow + numpy: no database, no HTTP. What a trained model does with the columns is in `features`.
"""

import errno
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

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


def check_header(names: list[str], max_columns: int | None = None) -> None:
    """Every column named, no name twice (and no more than max_columns): the rules for uploads and scored files."""
    if max_columns is not None and len(names) > max_columns:
        raise DataError(f"the file has {len(names)} columns; at most {max_columns} are accepted")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name.strip():
            raise DataError(f"column {i + 1} has an empty name; every column needs a name in the header row")
        if name in seen:
            raise DataError(f"column name '{name}' appears more than once; column names must be unique",
                            column=name)
        seen.add(name)


def disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: the server's fault, never reported as a problem with the data."""
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "no space left on device" in str(exc).lower()


# ---------------------------------------------------------------- CSV errors: one wording for uploads and scoring

_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+)(?:: invalid value '(.*)')?")
_EXPECTS = {"double": "a number", "bool": "true or false"}


@dataclass(frozen=True)
class ConversionFailure:
    """pyarrow could not read a value of `column` as `arrow_type`."""

    column: str
    arrow_type: str
    value: str | None

    def error(self) -> DataError:
        expects = _EXPECTS.get(self.arrow_type, self.arrow_type)
        got = "" if self.value is None else f", got {self.value!r}"
        return DataError(f"column '{self.column}' expects {expects}{got}", column=self.column)


def conversion_failure(message: str, names: list[str]) -> ConversionFailure | None:
    """The column and type behind a pyarrow CSV conversion error, or None for any other error."""
    m = _CONVERSION.search(message)
    if not m or int(m.group(1)) >= len(names):
        return None
    return ConversionFailure(column=names[int(m.group(1))], arrow_type=m.group(2), value=m.group(3))


def unreadable_csv(message: str, delimiter: str | None = ",") -> DataError:
    """A CSV/TSV that pyarrow could not parse: ragged rows said plainly, anything else quoted."""
    if "Expected" in message and "columns" in message:
        return DataError("ragged rows: " + message.replace("CSV parse error: ", "")
                         + "; every row needs as many fields as the header")
    return DataError(f"the file could not be parsed as {'TSV' if delimiter == chr(9) else 'CSV'}: {message}")



def _csv_batches(path: Path, delimiter: str,
                 column_types: dict[str, pa.DataType]) -> tuple[list[str], Iterable[pa.RecordBatch]]:
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=csv_convert_options(path, delimiter, column_types),
    )
    return reader.schema.names, reader


def _write_batches(names: list[str], batches: Iterable[pa.RecordBatch], dest: Path, max_columns: int,
                   max_rows: int | None) -> int:
    check_header(names, max_columns)
    writer = None
    n_rows = 0
    pending: list[pa.RecordBatch] = []  # small CSV blocks gathered into row groups of ROW_GROUP_ROWS
    try:
        for batch in batches:
            _stop_if_cancelled()
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
        if pending and writer is not None:
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
    names: list[str] = []  # from the previous try when opening the reader itself fails
    for _ in range(2 * max_columns + 2):
        try:
            names, reader = _csv_batches(path, delimiter, column_types)
            return _write_batches(names, reader, dest, max_columns, max_rows)
        except pa.ArrowInvalid as exc:
            failure = conversion_failure(str(exc), names)
            if failure is None:
                raise unreadable_csv(str(exc), delimiter) from None
            widen = failure.arrow_type.startswith(("int", "uint", "null"))
            column_types[failure.column] = pa.float64() if widen else pa.string()
            dest.unlink(missing_ok=True)
    raise DataError("the file's column types could not be determined")


def _write_parquet(path: Path, dest: Path, max_columns: int, max_rows: int | None) -> int:
    try:
        src = pq.ParquetFile(path)
        names = src.schema_arrow.names
        return _write_batches(names, src.iter_batches(batch_size=65536), dest, max_columns, max_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        if disk_full(exc):
            raise
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


def quote_value(value: Any) -> str:
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


class Cancelled(Exception):
    """The caller gave up on this ingest (its client went away); nothing was kept."""


_cancelled: ContextVar[Callable[[], bool] | None] = ContextVar("ingest_cancelled", default=None)


def _stop_if_cancelled() -> None:
    check = _cancelled.get()
    if check is not None and check():
        raise Cancelled()


def ingest(src: Path, dest: Path, *, max_columns: int, max_rows: int | None = None,
           max_array_bytes: int | None = None,
           cancelled: Callable[[], bool] | None = None) -> IngestResult:
    """Parse an uploaded file, write it to `dest` as Parquet, and describe its columns. `cancelled` is asked
    between batches whether to give up (Cancelled, and nothing is kept)."""
    token = _cancelled.set(cancelled)
    try:
        return _ingest(src, dest, max_columns=max_columns, max_rows=max_rows, max_array_bytes=max_array_bytes)
    finally:
        _cancelled.reset(token)


def _ingest(src: Path, dest: Path, *, max_columns: int, max_rows: int | None,
            max_array_bytes: int | None) -> IngestResult:
    fmt, delimiter = sniff_format(src)
    if fmt == "npz":
        return ingest_arrays(src, dest.with_suffix(".npz"), max_rows=max_rows, max_array_bytes=max_array_bytes)
    try:
        if fmt == "parquet":
            n_rows = _write_parquet(src, dest, max_columns, max_rows)
        else:
            assert delimiter is not None  # sniff_format names one for every text format
            n_rows = _write_csv(src, delimiter, dest, max_columns, max_rows)
        if n_rows == 0:
            raise DataError("the file has a header but no data rows")
        columns = _summaries(dest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return IngestResult(format=fmt, n_rows=n_rows, columns=columns)


# Columns read back per pass for their summaries: a file of thousands of columns is read in a few passes through one
# open file (one pq.read_table per column re-parses the whole footer each time: quadratic in the column count).
SUMMARY_COLUMNS_PER_READ = 256


# ... and at most about this many (uncompressed) bytes per pass, so that a long file is still read a few columns
# at a time (its peak memory stays near one pass's columns, not the whole table's).
SUMMARY_BYTES_PER_READ = 64 << 20


def _passes(parquet: pq.ParquetFile) -> list[list[str]]:
    """The columns read together for their summaries: consecutive, within both bounds above."""
    meta = parquet.metadata
    sizes = [sum(meta.row_group(g).column(c).total_uncompressed_size for g in range(meta.num_row_groups))
             for c in range(meta.num_columns)]
    passes: list[list[str]] = []
    current: list[str] = []
    held = 0
    for name, size in zip(parquet.schema_arrow.names, sizes, strict=True):
        if current and (len(current) >= SUMMARY_COLUMNS_PER_READ or held + size > SUMMARY_BYTES_PER_READ):
            passes.append(current)
            current, held = [], 0
        current.append(name)
        held += size
    if current:
        passes.append(current)
    return passes


def _summaries(path: Path) -> list[dict[str, Any]]:
    parquet = pq.ParquetFile(path)
    out: list[dict[str, Any]] = []
    for names in _passes(parquet):
        _stop_if_cancelled()
        part = parquet.read(columns=names)
        out.extend(summarise_column(name, part.column(name)) for name in part.column_names)
        del part
    return out


ARRAY_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bool")


# A compressed .npz member may unpack to at most this many times its stored size (real arrays compress 2-10x,
# even sparse images rarely 50x); above it the file is a decompression bomb. Small members are exempt.
MAX_COMPRESSION_RATIO = 100
RATIO_EXEMPT_BYTES = 1 << 20


def _check_unpacked_size(src: Path, max_bytes: int | None) -> None:
    """Refuse an .npz whose arrays would unpack to more than max_bytes or compress implausibly well, before
    unpacking anything (a small file can declare gigabytes)."""
    try:
        with zipfile.ZipFile(src) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"the file looks like .npz but could not be read: {exc}") from None
    unpacked = sum(info.file_size for info in members)
    if max_bytes is not None and unpacked > max_bytes:
        raise DataError(f"the .npz unpacks to {unpacked:,} bytes; at most {max_bytes:,} are accepted", column="X")
    for info in members:
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise DataError(f"the .npz member '{info.filename}' unpacks to {info.file_size:,} bytes from "
                            f"{info.compress_size:,} (more than {MAX_COMPRESSION_RATIO}:1); such a file is refused "
                            "as a decompression bomb: save the arrays uncompressed (numpy.savez)",
                            column=info.filename.removesuffix(".npy"))


def ingest_arrays(src: Path, dest: Path, *, max_rows: int | None = None,
                  max_array_bytes: int | None = None) -> IngestResult:
    """An .npz with `X` ([N, C, H, W], [N, H, W] or [N, D]) and optionally `y` ([N]); stored again as .npz.

    Loaded with allow_pickle=False: object arrays (which would need unpickling) are refused.
    """
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


def load_arrays(path: Path) -> dict[str, NDArray[Any]]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def preview(path: Path, n: int) -> list[dict[str, Any]]:
    """The first n rows as JSON-able records."""
    if path.suffix == ".npz":
        arrays = load_arrays(path)
        rows = [{k: v[i].tolist() for k, v in arrays.items()} for i in range(min(n, len(arrays["X"])))]
    else:
        rows = []
        for batch in pq.ParquetFile(path).iter_batches(batch_size=n):
            rows = batch.slice(0, n).to_pylist()
            break
    finite: list[dict[str, Any]] = _finite(rows)
    return finite


# ---------------------------------------------------------------- task


def infer_task(column: dict[str, Any]) -> str:
    """classification for strings, booleans and small-integer targets; regression for the rest."""
    if column["kind"] in ("categorical", "boolean"):
        return "classification"
    if column["dtype"].startswith(("int", "uint")) and column["n_unique"] <= MAX_CLASSES_FOR_INT_TARGET:
        return "classification"
    return "regression"


