"""Upload time: sniffing a file's format and CSV dialect, parsing it into Parquet (or checking an .npz), the
column summaries a data set shows, previews, and the task a target implies.

Pure pyarrow + numpy: no database, no HTTP. What a trained model does with the columns is in `features`.
"""

import csv
import errno
import io
import math
import os
import queue
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from service.training import dates

SNIFF_BYTES = 64 * 1024
# The streaming CSV reader holds about a dozen blocks' worth of buffers: 1 MiB blocks keep an upload's peak
# memory near 20 MB above the process's own (8 MiB blocks: about 120 MB) at the same speed.
CSV_BLOCK_BYTES = 1 << 20
HEADER_SCAN_BYTES = 64 << 20  # how far the column count looks for the end of the header row
# Rows per Parquet row group: one per CSV block would make thousands of tiny groups, slow to read back. A wide
# table closes its group earlier, at ROW_GROUP_BYTES of Arrow data, so that a group (what a reader of the stored
# file holds at once) stays within tens of megabytes whatever the column count.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 64 << 20
# Parsed blocks the reader thread may hold ahead of the writer: enough to keep both busy, few enough to bound memory.
PREFETCH_BLOCKS = 8
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
    dialect: dict[str, Any] | None = None  # how a text table was read (Dialect.describe)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # {code, column, message}: see `warnings`


# ---------------------------------------------------------------- ingest


# Values read as missing in CSV/TSV files (and in scored files): pyarrow's list and the spellings spreadsheets and
# statistics packages write. A text column keeps any other value as it is.
NULL_VALUES = ["", "NA", "N/A", "n/a", "na", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "Null", "None", "none",
               "-", "--", "?", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN"]
# Thousands separators recognised in numbers, by the file's decimal point (a space also as U+00A0 or U+202F).
THOUSANDS = {".": (",", "'", " ", "\u00a0", "\u202f"), ",": (".", " ", "\u00a0", "\u202f", "'")}


@dataclass(frozen=True)
class Dialect:
    """How a text table is written, as sniffed from its first 64 KiB: what the data set reports it decided."""

    delimiter: str
    decimal: str = "."
    encoding: str = "utf-8"  # as Python names the codec the file is read with
    quoted_newlines: bool = False  # quoted fields that hold line breaks (a slower parser reads them)
    # Columns whose numbers group their digits (1,234.5 or 1.234,5): the separator each one uses.
    thousands: tuple[tuple[str, str], ...] = ()

    def describe(self, fmt: str) -> dict[str, Any]:
        return {"format": fmt, "delimiter": self.delimiter, "decimal": self.decimal, "encoding": self.encoding,
                "quoted_newlines": self.quoted_newlines,
                "thousands_separator": sorted({sep for _, sep in self.thousands}) or None,
                "missing_values": NULL_VALUES}


def _encoding(head: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), UTF-16 with its mark, or else Windows-1252 (Latin-1 where a
    byte has no Windows-1252 meaning): the encodings spreadsheets save text tables in."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if b"\x00" in head:
        raise DataError("the file is binary, not CSV, TSV or Parquet; upload a UTF-8 text table or Parquet")
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is fine; anything earlier, or in a short file, is not UTF-8.
        if exc.start >= len(head) - 4 and len(head) >= SNIFF_BYTES:
            return "utf-8"
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _head_text(path: Path, encoding: str) -> tuple[str, bool]:
    """The first SNIFF_BYTES decoded, without a byte-order mark, and whether the file goes on after them."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
        more = bool(fh.read(1))
    return head.decode(encoding, errors="ignore").lstrip("\ufeff"), more


def _sample_rows(text: str, more: bool, delimiter: str) -> list[list[str]]:
    """The rows of the sniffed text (quotes honoured; the last, cut-off line left out when the file goes on)."""
    if more:
        text = text[: text.rfind("\n") + 1] if "\n" in text else text
    try:
        return [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
    except csv.Error:
        return [line.split(delimiter) for line in text.splitlines() if line]


def _delimiter(text: str, more: bool) -> str:
    """The candidate that splits the header into most fields and the sampled rows as the header: a ',' inside the
    decimal numbers of a ';' file splits the rows but not the header."""
    best, best_score = ",", (0.0, 1)
    for d in DELIMITERS:
        rows = _sample_rows(text, more, d)
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(len(r) == width for r in rows) / len(rows), width)
        if score > best_score:
            best, best_score = d, score
    return best


def sniff_format(path: Path) -> tuple[str, str | None]:
    """(format, delimiter) from the file's content, whatever its name says."""
    fmt, dialect = sniff(path)
    return fmt, None if dialect is None else dialect.delimiter


def sniff(path: Path) -> tuple[str, Dialect | None]:
    """The format, and for a text table its dialect, from the file's content, whatever its name says."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head:
        raise DataError("the file is empty; upload a CSV or TSV with a header row, or a Parquet file")
    if head.startswith(b"PAR1"):
        return "parquet", None
    if head.startswith(b"PK\x03\x04"):
        return "npz", None
    encoding = _encoding(head)
    text, more = _head_text(path, encoding)
    header = text.splitlines()[0] if text.strip() else ""
    if not header.strip():
        raise DataError("the first line is empty; the first line must be the header row with the column names")
    delimiter = _delimiter(text, more)
    rows = _sample_rows(text, more, delimiter)
    decimal = _decimal_point(rows) if delimiter != "," else "."
    dialect = Dialect(delimiter=delimiter, decimal=decimal, encoding=encoding,
                      quoted_newlines=any("\n" in cell for row in rows for cell in row),
                      thousands=_grouped_columns(rows, decimal))
    return ("tsv" if delimiter == "\t" else "csv"), dialect


_COMMA_DECIMAL = re.compile(r"^[+-]?(\d{1,3}([. \u00a0\u202f']\d{3})+|\d*),\d+$")
_DOT_DECIMAL = re.compile(r"^[+-]?(\d{1,3}([, \u00a0\u202f']\d{3})+|\d*)\.\d+$")


def _decimal_point(rows: list[list[str]]) -> str:
    """',' when the file writes its numbers with a decimal comma (as European spreadsheets export them, with ';' as
    the delimiter), else '.': decided by which form the first rows' fields take more often."""
    comma = dot = 0
    for row in rows[1:]:
        for cell in row:
            cell = cell.strip()
            comma += bool(_COMMA_DECIMAL.match(cell))
            dot += bool(_DOT_DECIMAL.match(cell))
    return "," if comma > dot else "."


def decimal_point(path: Path, delimiter: str) -> str:
    """The decimal point of a text table's numbers (see `_decimal_point`)."""
    if delimiter == ",":
        return "."
    with open(path, "rb") as fh:
        encoding = _encoding(fh.read(SNIFF_BYTES))
    text, more = _head_text(path, encoding)
    return _decimal_point(_sample_rows(text, more, delimiter))


def _grouped_columns(rows: list[list[str]], decimal: str) -> tuple[tuple[str, str], ...]:
    """Columns of the sampled rows whose every value is a number and at least one groups its digits with one of
    THOUSANDS' separators: (column name, separator)."""
    if len(rows) < 2:
        return ()
    dec = re.escape(decimal)
    plain = re.compile(rf"^[+-]?\d+({dec}\d+)?$")
    found: list[tuple[str, str]] = []
    for i, name in enumerate(rows[0]):
        values = [row[i].strip() for row in rows[1:] if i < len(row) and row[i].strip() not in NULL_VALUES]
        if not values:
            continue
        for sep in THOUSANDS[decimal]:
            grouped = re.compile(rf"^[+-]?\d{{1,3}}({re.escape(sep)}\d{{3}})+({dec}\d+)?$")
            hits = [bool(grouped.match(v)) for v in values]
            if any(hits) and all(h or plain.match(v) for h, v in zip(hits, values, strict=True)):
                found.append((name, sep))
                break
    return tuple(found)


def csv_convert_options(path: Path, delimiter: str, column_types: dict[str, pa.DataType],
                        decimal: str | None = None) -> pacsv.ConvertOptions:
    """How CSV text becomes values, shared by uploads and batch scoring: the file's decimal point, NULL_VALUES as
    missing."""
    return pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types, null_values=NULL_VALUES,
                                decimal_point=decimal or decimal_point(path, delimiter))


class _NotGrouped(Exception):
    """A column taken for grouped numbers holds a value that is none: it is read as text instead."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _grouped_to_numbers(arr: pa.Array, column: str, sep: str, decimal: str) -> pa.Array:
    text = pc.replace_substring(pc.utf8_trim_whitespace(arr), sep, "")
    if decimal != ".":
        text = pc.replace_substring(text, decimal, ".")
    try:
        return pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        raise _NotGrouped(column) from None


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



def _csv_batches(path: Path, dialect: Dialect,
                 column_types: dict[str, pa.DataType]) -> tuple[list[str], Iterable[pa.RecordBatch]]:
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, encoding=dialect.encoding),
        parse_options=pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=dialect.quoted_newlines),
        convert_options=csv_convert_options(path, dialect.delimiter, column_types, dialect.decimal),
    )
    return reader.schema.names, reader


_END = object()


def _prefetched(batches: Iterable[pa.RecordBatch], depth: int = PREFETCH_BLOCKS) -> Iterator[pa.RecordBatch]:
    """The batches, parsed ahead in a thread of their own: pyarrow parses without the GIL, so parsing the next
    blocks overlaps converting, summarising and writing this one. An error while parsing is raised here, in order."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def parse() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    thread = threading.Thread(target=parse, name="ingest-parse", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _write_batches(names: list[str], batches: Iterable[pa.RecordBatch], dest: Path, max_columns: int,
                   max_rows: int | None, grouped: dict[str, str] | None = None,
                   decimal: str = ".") -> tuple[int, "_Summaries | None"]:
    """Write the batches to `dest` as Parquet and summarise every row group as it is written: the row count and
    the summaries (None without rows)."""
    check_header(names, max_columns)
    writer = None
    summaries: _Summaries | None = None
    n_rows = 0
    pending: list[pa.RecordBatch] = []  # small CSV blocks gathered into row groups of ROW_GROUP_ROWS
    pending_rows = pending_bytes = 0

    def flush() -> None:
        assert writer is not None and summaries is not None
        group = pa.Table.from_batches(pending)
        writer.write_table(group)
        summaries.add(group)

    try:
        for batch in _prefetched(batches):
            _stop_if_cancelled()
            if grouped:
                batch = pa.RecordBatch.from_arrays(
                    [_grouped_to_numbers(arr, f.name, grouped[f.name], decimal) if f.name in grouped else arr
                     for f, arr in zip(batch.schema, batch.columns, strict=True)], names=batch.schema.names)
            batch = _normalise_batch(batch)
            if writer is None:
                # Dictionary pages pay off for repeated text; for numbers they cost more time than they save space.
                text = [f.name for f in batch.schema if pa.types.is_string(f.type)]
                writer = pq.ParquetWriter(dest, batch.schema, compression="zstd", use_dictionary=text)
                summaries = _Summaries(batch.schema)
            elif batch.schema != writer.schema:
                batch = batch.cast(writer.schema)
            pending.append(batch)
            n_rows += batch.num_rows
            pending_rows += batch.num_rows
            pending_bytes += batch.nbytes
            if max_rows is not None and n_rows > max_rows:
                raise DataError(f"the file has more than {max_rows:,} rows, the most this server accepts")
            if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= ROW_GROUP_BYTES:
                flush()
                pending, pending_rows, pending_bytes = [], 0, 0
        if pending and writer is not None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return n_rows, summaries


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


def _write_csv(path: Path, dialect: Dialect, dest: Path, max_columns: int,
               max_rows: int | None) -> tuple[int, "_Summaries | None", Dialect]:
    """Parse a text table into Parquet; the row count, the summaries and the dialect as finally read (a column taken
    for grouped numbers may turn out text; quoted line breaks may show after the sniffed part)."""
    # Count a very wide header before pyarrow builds a reader with a column per field (seconds per 100 000).
    width = _header_fields(path, dialect.delimiter) if dialect.encoding == "utf-8" else None
    if width is not None and width > max_columns:
        raise DataError(f"the file has {width} columns; at most {max_columns} are accepted")
    # pyarrow infers a column's type from the first block; a later value that does not fit
    # (e.g. "x" in an int column) is retried with a wider type for that column: int → float → string.
    grouped = dict(dialect.thousands)
    column_types: dict[str, pa.DataType] = {name: pa.string() for name in grouped}
    names: list[str] = []  # from the previous try when opening the reader itself fails
    for _ in range(3 * max_columns + 3):
        try:
            names, reader = _csv_batches(path, dialect, column_types)
            n_rows, summaries = _write_batches(names, reader, dest, max_columns, max_rows, grouped, dialect.decimal)
            return n_rows, summaries, replace(dialect, thousands=tuple(grouped.items()))
        except _NotGrouped as exc:
            del grouped[exc.column]
        except pa.ArrowInvalid as exc:
            failure = conversion_failure(str(exc), names)
            if failure is None:
                if not dialect.quoted_newlines and "Expected" in str(exc) and "columns" in str(exc):
                    dialect = replace(dialect, quoted_newlines=True)  # a quoted line break past the sniffed part
                    dest.unlink(missing_ok=True)
                    continue
                raise unreadable_csv(str(exc), dialect.delimiter) from None
            widen = failure.arrow_type.startswith(("int", "uint", "null"))
            column_types[failure.column] = pa.float64() if widen else pa.string()
        except UnicodeDecodeError as exc:
            raise DataError(f"the file is not valid {dialect.encoding} text past its start (byte {exc.start} of a "
                            "block cannot be decoded); save it as UTF-8 and upload again") from None
        dest.unlink(missing_ok=True)
    raise DataError("the file's column types could not be determined")


def _write_parquet(path: Path, dest: Path, max_columns: int, max_rows: int | None) -> tuple[int, "_Summaries | None"]:
    try:
        src = pq.ParquetFile(path)
        names = src.schema_arrow.names
        return _write_batches(names, src.iter_batches(batch_size=ROW_GROUP_ROWS), dest, max_columns, max_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        if disk_full(exc):
            raise
        raise DataError(f"the file looks like Parquet but could not be read: {exc}") from None


# A text or integer column is an identifier when (nearly) every row has its own value; such a column names rows
# and teaches a network nothing about new ones.
IDENTIFIER_UNIQUE_SHARE = 0.95
IDENTIFIER_MIN_ROWS = 20
_ID_NAME = re.compile(r"(^|[_\s.-])(id|key|uuid|guid|index)$|^(id|key|uuid|index)[_\s.-]|^unnamed: ?\d+$"
                      r"|^row ?(id|no|num|number)?$|(?-i:[a-z](Id|ID))$", re.IGNORECASE)
# Free text: values of several words on average (comments, descriptions, titles).
TEXT_MIN_WORDS = 4.0
TEXT_MIN_DISTINCT_SHARE = 0.5
# Most distinct levels a categorical input one-hot encodes; rarer levels share one "other" input pattern (as unseen
# levels do), so that a column of 10,000 levels does not become 10,000 inputs.
MAX_CATEGORY_LEVELS = 100
NUMBERS_AS_TEXT_SHARE = 0.9  # a text column whose values are nearly all numbers says so (typos, footnote marks)
_NUMBER = re.compile(r"^\s*[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?\s*$")
KIND_SAMPLE = 2000  # values looked at for word counts and numbers written as text


def summarise_column(name: str, col: pa.ChunkedArray, n_rows: int | None = None) -> dict[str, Any]:
    """Kind (and why), dtype, missing and distinct counts, and summary stats of one column."""
    t = col.type
    n_rows = len(col) if n_rows is None else n_rows
    n_missing = col.null_count
    n_unique = _count_distinct(col)
    info: dict[str, Any] = {"name": name, "dtype": str(t)}
    stats: dict[str, Any] = {}
    if pa.types.is_boolean(t):
        info["kind"], info["reason"] = "boolean", "boolean: true/false values"
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        info["kind"], info["reason"] = _number_kind(name, col, n_unique)
    else:
        info.update(_text_kind(col, n_unique))
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        n_missing = int(np.isnan(values).sum())
        stats["n_infinite"] = int(np.isinf(values).sum())
        if finite.size:
            stats.update(min=float(finite.min()), max=float(finite.max()),
                         mean=float(finite.mean()), std=float(finite.std()))
        if pa.types.is_floating(t) and 0 < n_unique <= MAX_CLASSES_FOR_INT_TARGET:
            stats.update(_whole_numbers(finite))
    if info["kind"] == "datetime":
        seconds = info.pop("_seconds")
        present = seconds[~np.isnan(seconds)]
        stats["n_unparsed"] = int(len(col) - col.null_count - present.size)
        if present.size:
            stats.update(min=_iso(present.min()), max=_iso(present.max()))
    elif info["kind"] in ("categorical", "boolean", "identifier", "text") or pa.types.is_integer(t):
        top = _top_values(col)
        if top:
            stats["top"] = top
    info["n_missing"] = int(n_missing)
    info["n_unique"] = n_unique
    info["stats"] = _finite(stats)
    return info


def _top_values(col: pa.ChunkedArray) -> list[dict[str, Any]]:
    """The TOP_VALUES most frequent values, the most frequent first (equal counts: by their text)."""
    counts = pc.value_counts(col.drop_null())
    return _top_of_counts(counts.field("values"), counts.field("counts").to_numpy())


def _top_of_counts(distinct: pa.Array, n: NDArray[Any]) -> list[dict[str, Any]]:
    """`_top_values` from each distinct value and its count."""
    if not len(n):
        return []
    k = min(TOP_VALUES, len(n))
    kth = np.partition(n, len(n) - k)[len(n) - k]
    candidates = np.nonzero(n >= kth)[0]  # every value that can be among the first k: few, unless counts tie
    values = distinct.take(pa.array(candidates))
    if len(candidates) > 64:  # many ties (an identifier: every count 1): let Arrow order them by text
        order = pc.sort_indices(pa.table({"count": pa.array(-n[candidates]), "text": pc.cast(values, pa.string())}),
                                sort_keys=[("count", "ascending"), ("text", "ascending")]).to_numpy()[:k]
        pairs = [(values[int(i)].as_py(), int(n[candidates[i]])) for i in order]
    else:
        pairs = sorted(zip(values.to_pylist(), n[candidates].tolist(), strict=True),
                       key=lambda vc: (-vc[1], str(vc[0])))[:k]
    return [{"value": _shorten(v), "count": c} for v, c in pairs]


def _iso(seconds: float) -> str:
    stamp = np.datetime64(int(seconds), "s")
    text = str(stamp)
    return text.removesuffix("T00:00:00")


def _looks_like_row_numbers(lo: int, hi: int, n_unique: int) -> bool:
    """0, 1, 2, … or 1, 2, 3, … in some order (years 1959, 1960, … count too, but they are a quantity)."""
    return lo in (0, 1) and hi - lo == n_unique - 1


def _number_kind(name: str, col: pa.ChunkedArray, n_unique: int) -> tuple[str, str]:
    if not pa.types.is_integer(col.type) or col.null_count or len(col) == 0:
        return _kind_of_numbers(name, col.type, len(col), col.null_count, n_unique, 0, 0)
    lo, hi = pc.min_max(col).values()
    return _kind_of_numbers(name, col.type, len(col), col.null_count, n_unique, lo.as_py(), hi.as_py())


def _kind_of_numbers(name: str, dtype: pa.DataType, n: int, n_null: int, n_unique: int, lo: int,
                     hi: int) -> tuple[str, str]:
    """A number column's kind and why, from its counts and (integers) its least and greatest value."""
    integers = pa.types.is_integer(dtype)
    if (integers and n >= IDENTIFIER_MIN_ROWS and n_null == 0 and n_unique == n
            and (_ID_NAME.search(name.strip()) or _looks_like_row_numbers(lo, hi, n_unique))):
        why = "its name says so" if _ID_NAME.search(name.strip()) else "they count the rows"
        return "identifier", f"identifier: {n_unique} distinct integers in {n} rows, and {why}"
    return "numeric", f"numeric: {'integers' if integers else 'decimal numbers'}"


def _text_kind(col: pa.ChunkedArray, n_unique: int) -> dict[str, Any]:
    strings = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
    present = len(col) - col.null_count
    found = dates.detect(strings)
    if found is not None:
        share = "every value reads" if found.parsed == found.present else \
            f"{found.parsed} of {found.present} values read"
        reason = f"datetime: {share} as {dates.describe(found.layout)}"
        if found.ambiguous:
            reason += " (day and month could be either way round; read month first)"
        return {"kind": "datetime", "reason": reason, "datetime_layout": found.layout, "_seconds": found.seconds,
                **({"datetime_ambiguous": True} if found.ambiguous else {})}
    sample = strings.drop_null().slice(0, KIND_SAMPLE)
    if len(sample):
        words = pc.mean(pc.add(pc.count_substring_regex(pc.utf8_trim_whitespace(sample), r"\s+"), 1)).as_py()
        if words >= TEXT_MIN_WORDS and n_unique >= TEXT_MIN_DISTINCT_SHARE * present:
            return {"kind": "text", "reason": f"text: {words:.1f} words per value on average, "
                    f"{n_unique} distinct values in {present} rows"}
    info: dict[str, Any] = {"kind": "categorical", "reason": f"categorical: {n_unique} distinct text values"}
    if len(sample):
        # Nearly all numbers: a number column with a few stray cells (a typo, a footnote mark), not an identifier.
        numeric = pc.match_substring_regex(sample, _NUMBER.pattern)
        share = pc.mean(pc.cast(numeric, pa.float64())).as_py()
        if NUMBERS_AS_TEXT_SHARE <= share < 1:
            info["not_a_number"] = _shorten(sample.filter(pc.invert(numeric))[0].as_py())
            return info
    if present >= IDENTIFIER_MIN_ROWS and n_unique >= IDENTIFIER_UNIQUE_SHARE * present:
        return {"kind": "identifier", "reason": f"identifier: {n_unique} distinct values in {present} rows"}
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
    fmt, dialect = sniff(src)
    if fmt == "npz":
        return ingest_arrays(src, dest.with_suffix(".npz"), max_rows=max_rows, max_array_bytes=max_array_bytes)
    try:
        if dialect is None:
            n_rows, summaries = _write_parquet(src, dest, max_columns, max_rows)
        else:
            n_rows, summaries, dialect = _write_csv(src, dialect, dest, max_columns, max_rows)
        if n_rows == 0 or summaries is None:
            raise DataError("the file has a header but no data rows")
        columns = summaries.finish(dest, n_rows)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return IngestResult(format=fmt, n_rows=n_rows, columns=columns,
                        dialect=None if dialect is None else dialect.describe(fmt),
                        warnings=warnings(columns, n_rows, dialect))


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


def _summaries(path: Path, n_rows: int, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """The summaries of the stored file's columns (or of those in `only`), read back a few columns at a time."""
    parquet = pq.ParquetFile(path)
    out: dict[str, dict[str, Any]] = {}
    for names in _passes(parquet):
        names = [n for n in names if only is None or n in only]
        if not names:
            continue
        _stop_if_cancelled()
        part = parquet.read(columns=names)
        out.update((name, summarise_column(name, part.column(name), n_rows)) for name in part.column_names)
        del part
    return out


# What the summaries may hold of the values while the file is written (the distinct values of each number column,
# the text columns whole). Past it the largest column is dropped: a number column keeps its counts and moments and
# reads back only its own values from the stored file for the distinct count; a text column is summarised from the
# stored file as in `_summaries`. So the memory an upload takes stays bounded whatever its size.
SUMMARY_HELD_BYTES = 16 << 20
RECOUNT_THREADS = 2
# Sorted runs of distinct values a number column gathers before they are merged into one (which shrinks a column
# of few distinct values to one short run).
RUNS_BEFORE_MERGE = 8


def _merge_runs(runs: list[NDArray[Any]], counts: list[NDArray[Any]] | None,
                sorted_runs: bool = True) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """Sorted runs of distinct values (or any values, `sorted_runs` False) as one sorted run of distinct values
    (and their counts summed)."""
    values = np.concatenate(runs)
    if counts is None:
        # Timsort merges sorted runs in a few passes; unsorted values sort faster by the default kind.
        ordered = np.sort(values, kind="stable" if sorted_runs else None)
        keep = np.empty(ordered.size, dtype=bool)
        keep[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
        return ordered[keep], None
    order = np.argsort(values, kind="stable")
    ordered, n = values[order], np.concatenate(counts)[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1]))) if ordered.size else \
        np.zeros(0, dtype=np.intp)
    return ordered[starts], np.add.reduceat(n, starts) if starts.size else n


class _ColumnSummary:
    """One column's summary built from its row groups as they are written: counts and moments of numbers, their
    distinct values as sorted runs (integers with counts, for the top values), text columns' values whole."""

    def __init__(self, name: str, dtype: pa.DataType) -> None:
        self.name, self.dtype = name, dtype
        self.numeric = pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
        self.rows = self.nulls = self.nan = self.infinite = 0
        self.finite, self.mean, self.m2 = 0, 0.0, 0.0  # count, mean and squared deviations of the finite values
        self.lo, self.hi = math.inf, -math.inf
        self.runs: list[NDArray[Any]] = []
        self.counts: list[NDArray[Any]] | None = [] if pa.types.is_integer(dtype) else None
        self.chunks: list[pa.Array] = []  # other columns: their values, summarised whole at the end
        self.held = 0
        self.dropped = False

    def add(self, col: pa.ChunkedArray) -> None:
        self.rows += len(col)
        self.nulls += col.null_count
        if not self.numeric:
            if self.dropped:
                return
            self.chunks.extend(col.chunks)
            self.held += col.nbytes
            return
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        nan = np.isnan(values)
        self.nan += int(nan.sum()) - col.null_count
        ok = np.isfinite(values)
        self.infinite += int(values.size - ok.sum() - nan.sum())
        finite = values[ok]
        if finite.size:
            n, mean = finite.size, float(finite.mean())
            m2 = float(np.square(finite - mean).sum())
            delta, total = mean - self.mean, self.finite + n
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.finite * n / total
            self.finite = total
            self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        if self.dropped:  # its distinct values are counted from the stored file
            return
        self._add_distinct(col)
        if len(self.runs) >= RUNS_BEFORE_MERGE:
            merged, merged_counts = _merge_runs(self.runs, self.counts)
            self.runs = [merged]
            self.counts = None if merged_counts is None else [merged_counts]
        self.held = sum(r.nbytes for r in self.runs) + sum(c.nbytes for c in self.counts or [])

    def _add_distinct(self, col: pa.ChunkedArray) -> None:
        """The distinct values of a number column's rows as one more sorted run (integers: with their counts)."""
        present = col.drop_null().to_numpy() if col.null_count else col.to_numpy()
        if present.dtype.kind == "f":  # bit patterns, as `_count_distinct` counts them
            present = np.where(np.isnan(present), np.array(np.nan, present.dtype), present).view(
                f"i{present.itemsize}")
        if self.counts is None:
            run, _ = _merge_runs([present], None, sorted_runs=False)
            self.runs.append(run)
        else:
            run, n_run = np.unique(present, return_counts=True)
            self.runs.append(run)
            self.counts.append(n_run)

    def recount(self, path: Path) -> dict[str, Any]:
        """The summary of a dropped number column: its moments from the pass, its distinct values (what did not fit)
        from the stored file, this column alone."""
        self.counts = [] if pa.types.is_integer(self.dtype) else None
        self._add_distinct(pq.ParquetFile(path).read(columns=[self.name]).column(0))
        summary = self.finish(self.rows)
        self.runs, self.counts = [], None
        return summary

    def drop(self) -> None:
        """Hold nothing more: the column is summarised from the stored file instead."""
        self.dropped = True
        self.runs, self.counts, self.chunks, self.held = [], None, [], 0

    def finish(self, n_rows: int) -> dict[str, Any]:
        """The summary `summarise_column` gives for the whole column."""
        if not self.numeric:
            return summarise_column(self.name, pa.chunked_array(self.chunks, type=self.dtype), n_rows)
        distinct, counts = _merge_runs(self.runs, self.counts) if self.runs else (np.zeros(0, dtype=np.int64), None)
        n_unique = int(distinct.size)
        integers = pa.types.is_integer(self.dtype)
        lo, hi = (int(distinct[0]), int(distinct[-1])) if integers and n_unique else (0, 0)
        kind, reason = _kind_of_numbers(self.name, self.dtype, self.rows, self.nulls, n_unique, lo, hi)
        stats: dict[str, Any] = {"n_infinite": self.infinite}
        if self.finite:
            stats.update(min=self.lo, max=self.hi, mean=self.mean, std=math.sqrt(max(self.m2, 0.0) / self.finite))
        if integers and counts is not None:
            top = _top_of_counts(pa.array(distinct, type=self.dtype), counts)
            if top:
                stats["top"] = top
        if not integers and 0 < n_unique <= MAX_CLASSES_FOR_INT_TARGET:
            # the distinct values are float bit patterns (see _add_distinct)
            values = distinct.view(f"f{distinct.dtype.itemsize}")
            stats.update(_whole_numbers(values[np.isfinite(values)]))
        return {"name": self.name, "dtype": str(self.dtype), "kind": kind, "reason": reason,
                "n_missing": self.nulls + self.nan, "n_unique": n_unique, "stats": _finite(stats)}


class _Summaries:
    """Every column's `_ColumnSummary`, within SUMMARY_HELD_BYTES together."""

    def __init__(self, schema: pa.Schema) -> None:
        self.columns = [_ColumnSummary(f.name, f.type) for f in schema]

    def add(self, group: pa.Table) -> None:
        for summary, col in zip(self.columns, group.columns, strict=True):
            summary.add(col)
        held = sum(c.held for c in self.columns)
        while held > SUMMARY_HELD_BYTES:
            largest = max(self.columns, key=lambda c: c.held)
            held -= largest.held
            largest.drop()

    def finish(self, path: Path, n_rows: int) -> list[dict[str, Any]]:
        """The summaries in column order; those of dropped columns read back from the stored file at `path`."""
        dropped = {c.name for c in self.columns if c.dropped and not c.numeric}
        again = _summaries(path, n_rows, dropped) if dropped else {}
        # A dropped number column is read back alone for its distinct values, two at a time (reading and sorting
        # release the GIL), so that memory holds two columns, not the table.
        numbers = [c for c in self.columns if c.dropped and c.numeric]
        _stop_if_cancelled()
        with ThreadPoolExecutor(max_workers=RECOUNT_THREADS) as pool:
            again.update(zip((c.name for c in numbers), pool.map(lambda c: c.recount(path), numbers), strict=True))
        out = []
        for c in self.columns:
            _stop_if_cancelled()
            out.append(again[c.name] if c.dropped else c.finish(n_rows))
        return out


# ---------------------------------------------------------------- warnings

# Every warning code a data set can carry (the README lists them with what each means).
DATASET_WARNINGS = ("not_utf8", "identifier_column", "text_column", "ambiguous_dates", "unparsed_dates",
                    "numbers_as_text", "constant_column", "empty_column", "many_levels")


# Warnings of one code named column by column; past this many columns, one more warning counts the rest.
WARNINGS_PER_CODE = 20


def warning(code: str, column: str | None, message: str) -> dict[str, Any]:
    return {"code": code, "column": column, "message": message}


def _why(column: dict[str, Any]) -> str:
    return str(column["reason"]).split(": ", 1)[-1]


def _capped(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most WARNINGS_PER_CODE warnings of each code, and for the rest one that names how many and the first."""
    by_code: dict[str, list[dict[str, Any]]] = {}
    for w in found:
        by_code.setdefault(w["code"], []).append(w)
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for w in found:
        i = seen[w["code"]] = seen.get(w["code"], -1) + 1
        if i < WARNINGS_PER_CODE:
            out.append(w)
        elif i == WARNINGS_PER_CODE:
            rest = by_code[w["code"]][WARNINGS_PER_CODE:]
            out.append(warning(w["code"], None, f"and {len(rest)} more column(s) like this, from '{rest[0]['column']}'"
                               f" to '{rest[-1]['column']}'"))
    return out


def warnings(columns: list[dict[str, Any]], n_rows: int, dialect: Dialect | None = None) -> list[dict[str, Any]]:
    """What a data set's user should know about its columns before training on them: each {code, column,
    message}, in column order (the file's own first)."""
    out: list[dict[str, Any]] = []
    if dialect is not None and dialect.encoding not in ("utf-8", "utf-16"):
        name = {"cp1252": "Windows-1252", "latin-1": "Latin-1"}.get(dialect.encoding, dialect.encoding)
        out.append(warning("not_utf8", None, f"the file is not UTF-8; it was read as {name} text (check accented "
                           "letters in the preview; save it as UTF-8 to be sure)"))
    for c in columns:
        name, kind = c["name"], c["kind"]
        if kind == "identifier":
            out.append(warning("identifier_column", name, f"'{name}' looks like an identifier ({_why(c)}); "
                               "it is left out of training unless a job lists it in features"))
        elif kind == "text":
            out.append(warning("text_column", name, f"'{name}' looks like free text ({_why(c)}); it is "
                               "left out of training unless a job lists it in features"))
        elif kind == "datetime":
            if c.get("datetime_ambiguous"):
                out.append(warning("ambiguous_dates", name, f"every date in '{name}' reads as month/day and as "
                                   "day/month; it was read month first (set its kind with PATCH /datasets/{id} "
                                   "if that is wrong, or write the dates as YYYY-MM-DD)"))
            unparsed = c["stats"].get("n_unparsed", 0)
            if unparsed:
                out.append(warning("unparsed_dates", name, f"{unparsed} value(s) of '{name}' are not dates in its "
                                   "layout; they are treated as missing"))
        if "not_a_number" in c:
            out.append(warning("numbers_as_text", name, f"'{name}' holds numbers but also text such as "
                               f"{quote_value(c['not_a_number'])}, so it is read as categorical; fix or blank those "
                               "cells (missing values may be written as empty, NA or -) to use it as numbers"))
        present = n_rows - c.get("n_missing", 0)
        if kind != "tensor" and present == 0:
            out.append(warning("empty_column", name, f"'{name}' has no values; it is left out of training"))
        elif kind != "tensor" and n_rows > 1 and c.get("n_unique", 0) == 1 and c.get("n_missing", 0) == 0:
            out.append(warning("constant_column", name, f"'{name}' has the same value in every row; it is left "
                               "out of training"))
        if kind == "categorical" and c.get("n_unique", 0) > MAX_CATEGORY_LEVELS:
            out.append(warning("many_levels", name, f"'{name}' has {c['n_unique']} distinct values; a network "
                               f"encodes its {MAX_CATEGORY_LEVELS} most frequent ones and treats the rest as one "
                               "'other' level"))
    return _capped(out)


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


def _whole_numbers(values: NDArray[np.float64]) -> dict[str, bool]:
    """{"whole_numbers": True} for a float column of few distinct values that are all whole numbers (0.0 and 1.0:
    classes written as a spreadsheet or pandas writes integers next to a missing value), else nothing."""
    return {"whole_numbers": True} if values.size and bool(np.all(values == np.round(values))) else {}


def infer_task(column: dict[str, Any]) -> str:
    """classification for strings, booleans and small-integer targets (whole numbers written as floats too);
    regression for the rest."""
    if column["kind"] in ("categorical", "boolean", "text") or not column["dtype"].startswith(("int", "uint",
                                                                                               "float", "double")):
        return "classification"
    small = column["n_unique"] <= MAX_CLASSES_FOR_INT_TARGET
    if small and column["dtype"].startswith(("int", "uint")):
        return "classification"
    # one value written as 5.0 says nothing of classes: it stays a (constant) quantity
    if small and column["n_unique"] >= 2 and (column.get("stats") or {}).get("whole_numbers"):
        return "classification"
    return "regression"


