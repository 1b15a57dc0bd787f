"""Batch scoring: a whole CSV (or Parquet) file through a model, as CSV.

The file is read in batches (at most BATCH_ROWS rows), each batch goes through the model's fitted preprocessing
and the network, and its rows go out at once, so a file of millions of rows is never held whole. Before the
answer starts, every row is parsed once with the features' types and the first batch is scored, so a missing
column or a value of the wrong type anywhere is an ordinary 422 problem. The router is in api/scoring.py.
"""

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.server.errors import InvalidInput
from service.server.predict import ModelCache
from service.server.tables import Model
from service.training import ingest
from service.training.artifact import ModelMeta

if TYPE_CHECKING:  # torch loads with the first model this process serves
    from torch import nn

log = logging.getLogger("mlps.api")

BATCH_ROWS = 65_536
CSV_BLOCK_BYTES = 4 << 20
PREDICTION = "prediction"


def _file_error(message: str, column: str | None = None) -> InvalidInput:
    error: dict[str, Any] = {"field": "file", "message": message}
    if column is not None:
        error["column"] = column
    return InvalidInput(message, errors=[error])


def _arrow_type(kind: str) -> pa.DataType:
    return {"categorical": pa.string(), "boolean": pa.bool_()}.get(kind, pa.float64())


@dataclass
class Scorer:
    """A table model's inference over batches: input columns in, input columns plus predictions out."""

    net: "nn.Module"
    meta: ModelMeta

    @property
    def features(self) -> list[dict[str, Any]]:
        """The model's fitted input columns (name, kind, ...)."""
        features: list[dict[str, Any]] = self.meta.preprocessing["features"]
        return features

    def score(self, batch: pa.RecordBatch) -> pa.Table:
        """The batch's columns (less any clashing with the outputs) followed by the prediction columns."""
        from service.training import pipeline as P

        table = pa.Table.from_batches([batch])
        X = P.inputs_from_table(table.select([f["name"] for f in self.features]), self.meta)
        raw = P.predict_arrays(self.net, self.meta, X)
        added: dict[str, pa.Array] = {}
        target = self.meta.target
        if raw.classes is not None:  # columns straight from the arrays: no per-row Python objects
            added[PREDICTION] = pa.array(target["labels"]).take(pa.array(raw.classes))
            if raw.probabilities is not None:
                for j, label in enumerate(target["labels"]):
                    added[f"p_{label}"] = pa.array(raw.probabilities[:, j])
        else:
            assert raw.values is not None  # an answer without classes has values
            if raw.values.shape[1] > 1:
                for j, name in enumerate(target["names"]):
                    added[f"{PREDICTION}_{name}"] = pa.array(raw.values[:, j])
            else:
                added[PREDICTION] = pa.array(raw.values[:, 0])
        keep = [name for name in table.column_names if name not in added]
        return pa.Table.from_arrays([*(table.column(n) for n in keep), *added.values()], names=[*keep, *added])


class BatchReader:
    """Batches of at most BATCH_ROWS rows from a CSV/TSV or Parquet file, with the features' types."""

    def __init__(self, path: Path, features: list[dict[str, Any]]) -> None:
        self.path = path
        self.kinds = {f["name"]: f["kind"] for f in features}
        try:
            fmt, delimiter = ingest.sniff_format(path)
        except ingest.DataError as exc:
            raise _file_error(str(exc)) from None
        if fmt == "npz":
            raise _file_error("this endpoint scores tables (CSV, TSV or Parquet); for arrays send 'inputs' to "
                              "POST /predict")
        self.format = fmt
        self.delimiter = delimiter
        if fmt == "parquet":
            self.names = self._open_parquet()
        else:
            assert delimiter is not None  # sniff_format names one for every text format
            self.names = self._open_csv(delimiter)
        missing = [name for name in self.kinds if name not in self.names]
        if missing:
            listed = ", ".join(f"'{m}'" for m in missing)
            raise InvalidInput(f"the file lacks the model's feature column(s) {listed}; its columns are: "
                               + ", ".join(f"'{n}'" for n in self.names[:50]),
                               errors=[{"field": "file", "column": m, "message": "column is missing"}
                                       for m in missing])

    def _open_csv(self, delimiter: str) -> list[str]:
        # Features get the model's types; every other column passes through as text, so that its type cannot
        # change from one batch to the next.
        try:
            names: list[str] = pacsv.read_csv(io.BytesIO(self._first_line()),
                                              parse_options=pacsv.ParseOptions(delimiter=delimiter)).column_names
        except pa.ArrowInvalid as exc:
            raise _file_error(f"the header row could not be parsed: {exc}") from None
        except UnicodeDecodeError as exc:
            raise _file_error(f"the header row is not UTF-8 text (invalid byte at offset {exc.start}); save the file "
                              "as UTF-8 and upload again") from None
        try:
            ingest.check_header(names)
        except ingest.DataError as exc:
            raise _file_error(str(exc), column=exc.column) from None
        types = {name: _arrow_type(self.kinds[name]) if name in self.kinds else pa.string() for name in names}
        self._csv = (pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), pacsv.ParseOptions(delimiter=delimiter),
                     ingest.csv_convert_options(self.path, delimiter, types))
        return names

    def _first_line(self) -> bytes:
        with open(self.path, "rb") as fh:
            return fh.readline(1 << 20).rstrip(b"\r\n") + b"\n"

    def _open_parquet(self) -> list[str]:
        try:
            self._parquet = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _file_error(f"the file looks like Parquet but could not be read: {exc}") from None
        return list(self._parquet.schema_arrow.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every batch in file order; conversion errors become InvalidInput naming the column."""
        source = self._parquet_batches() if self.format == "parquet" else self._csv_batches()
        while True:
            try:
                batch = next(source)
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise self._conversion_error(exc) from None
            for start in range(0, batch.num_rows, BATCH_ROWS):
                yield batch.slice(start, BATCH_ROWS)

    def _csv_batches(self) -> Iterator[pa.RecordBatch]:
        read, parse, convert = self._csv
        yield from pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert)

    def _parquet_batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self._parquet.iter_batches(batch_size=BATCH_ROWS):
            arrays = []
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                if name in self.kinds:
                    column = pc.cast(column, _arrow_type(self.kinds[name]))
                arrays.append(column)
            yield pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)

    def _conversion_error(self, exc: pa.ArrowInvalid) -> InvalidInput:
        failure = ingest.conversion_failure(str(exc), self.names)
        error = failure.error() if failure is not None else ingest.unreadable_csv(str(exc), self.delimiter)
        return _file_error(str(error), column=error.column)


# OWASP's rule for CSV injection: a cell a spreadsheet would run as a formula starts with one of these.
_FORMULA_START = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _neutralise(table: pa.Table) -> pa.Table:
    """Text cells and headers that a spreadsheet would run as formulas, prefixed with a single quote so that they
    read as text; numbers (-1.5, +3) are left as they are."""
    arrays, names = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            risky = pc.and_(pc.match_substring_regex(column, _FORMULA_START),
                            pc.invert(pc.match_substring_regex(column, _NUMBER)))
            column = pc.if_else(pc.fill_null(risky, False), pc.binary_join_element_wise("'", column, ""), column)
        arrays.append(column)
        names.append("'" + name if re.match(_FORMULA_START, name) and not re.match(_NUMBER, name) else name)
    return pa.Table.from_arrays(arrays, names=names)


def _encode(table: pa.Table, header: bool, escape_formulas: bool = True) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(_neutralise(table) if escape_formulas else table, buf,
                    write_options=pacsv.WriteOptions(include_header=header))
    return buf.getvalue()


def prepare_scoring(cache: ModelCache, model: Model, path: Path,
                    escape_formulas: bool = True) -> tuple[int, Iterator[bytes]]:
    """Check the whole file against the model and score its first batch; (rows, the answer's body)."""
    net, meta = cache.get(model.id)
    if meta.preprocessing.get("kind") == "array":
        raise _file_error("this model was trained on arrays (.npz); send 'inputs' to POST /predict instead")
    scorer = Scorer(net=net, meta=meta)
    reader = BatchReader(path, scorer.features)
    # A first pass parses every row with the features' types (cheap next to inference), so that a bad value
    # anywhere in the file is a 422 here rather than a stream cut off part-way.
    n_rows = sum(batch.num_rows for batch in reader.batches())
    if n_rows == 0:
        raise _file_error("the file has a header but no data rows")
    batches = (batch for batch in reader.batches() if batch.num_rows)
    try:
        head = _encode(scorer.score(next(batches)), header=True, escape_formulas=escape_formulas)
    except ingest.DataError as exc:
        raise _file_error(str(exc), column=exc.column) from None

    def body() -> Iterator[bytes]:
        try:
            yield head
            for batch in batches:
                yield _encode(scorer.score(batch), header=False, escape_formulas=escape_formulas)
        except Exception:
            log.exception("batch scoring with model %s stopped part-way through the file", model.id)
            raise
        finally:
            path.unlink(missing_ok=True)

    return n_rows, body()


