"""service.training.ingest: format and dialect sniffing, CSV/Parquet to Parquet, column summaries, task inference."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.training import ingest
from tests.helpers import dataset_path


def ingest_bytes(tmp_path, content: bytes):
    src = tmp_path / "upload"
    src.write_bytes(content)
    dest = tmp_path / "out.parquet"
    return ingest.ingest(src, dest, max_columns=100), dest


def test_iris_schema_inference(tmp_path):
    res, dest = ingest_bytes(tmp_path, dataset_path("iris.csv").read_bytes())
    cols = {c["name"]: c for c in res.columns}
    assert res.format == "csv" and res.n_rows == 150
    assert cols["sepal_length"]["kind"] == "numeric"
    assert cols["sepal_length"]["stats"]["min"] == pytest.approx(4.3)
    assert cols["sepal_length"]["stats"]["max"] == pytest.approx(7.9)
    assert cols["species"]["kind"] == "categorical" and cols["species"]["n_unique"] == 3
    assert {t["value"] for t in cols["species"]["stats"]["top"]} == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert pq.read_table(dest).num_rows == 150


def test_tsv_semicolon_missing_values_and_booleans(tmp_path):
    res, _ = ingest_bytes(tmp_path, b"a\tb\tc\n1\tx\ttrue\n\ty\tfalse\n3\t\ttrue\n")
    assert res.format == "tsv"
    cols = {c["name"]: c for c in res.columns}
    assert cols["a"]["n_missing"] == 1 and cols["a"]["kind"] == "numeric"
    assert cols["b"]["n_missing"] == 1 and cols["b"]["kind"] == "categorical"
    assert cols["c"]["kind"] == "boolean"
    res, _ = ingest_bytes(tmp_path, b"a;b\n1;2\n3;4\n")
    assert [c["name"] for c in res.columns] == ["a", "b"]


def test_type_that_changes_after_first_block_is_widened(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 64)
    rows = b"".join(b"%d,%d\n" % (i, i) for i in range(200))
    res, dest = ingest_bytes(tmp_path, b"a,b\n" + rows + b"2.5,x\n")
    kinds = {c["name"]: (c["kind"], c["dtype"]) for c in res.columns}
    assert kinds["a"] == ("numeric", "double")
    assert kinds["b"] == ("categorical", "string")
    assert pq.read_table(dest).num_rows == 201


def test_parquet_upload(tmp_path):
    src = tmp_path / "x.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0], "label": ["a", "b"]}), src)
    res = ingest.ingest(src, tmp_path / "out.parquet", max_columns=10)
    assert res.format == "parquet" and res.n_rows == 2


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"),
    (b"a,b,c\n", "no data rows"),
    (b"a,b,c\n1,2,3\n4,5\n", "ragged rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"a,a\n1,2\n", "more than once"),
    (b"a,,c\n1,2,3\n", "empty name"),
])
def test_bad_files_are_rejected_and_leave_nothing(tmp_path, content, message):
    with pytest.raises(ingest.DataError, match=message):
        ingest_bytes(tmp_path, content)
    assert not (tmp_path / "out.parquet").exists()


def test_task_inference():
    assert ingest.infer_task({"kind": "categorical", "dtype": "string", "n_unique": 3}) == "classification"
    assert ingest.infer_task({"kind": "boolean", "dtype": "bool", "n_unique": 2}) == "classification"
    assert ingest.infer_task({"kind": "numeric", "dtype": "int64", "n_unique": 2}) == "classification"
    assert ingest.infer_task({"kind": "numeric", "dtype": "int64", "n_unique": 300}) == "regression"
    assert ingest.infer_task({"kind": "numeric", "dtype": "double", "n_unique": 2}) == "regression"
    whole = {"kind": "numeric", "dtype": "double", "n_unique": 2, "stats": {"whole_numbers": True}}
    assert ingest.infer_task(whole) == "classification"
    assert ingest.infer_task({**whole, "n_unique": 21}) == "regression"
    assert ingest.infer_task({**whole, "n_unique": 1}) == "regression"  # a constant 5.0 is no class column


WHOLE_FLOATS = b"".join([b"y,few,many,frac\n", *[f"{i % 2}.0,{i % 3}.0,{i}.0,{i % 2}.5\n".encode()
                                                  for i in range(40)], b",1.0,40.0,0.5\n"])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_whole_number_floats_with_few_values_are_marked_and_make_a_classification_target(tmp_path, kind):
    """0.0 and 1.0 (as pandas writes an integer column with a missing value) are classes, not quantities."""
    content = WHOLE_FLOATS
    if kind == "parquet":
        import io

        import pyarrow.csv as pacsv
        buffer = io.BytesIO()
        pq.write_table(pacsv.read_csv(io.BytesIO(WHOLE_FLOATS)), buffer)
        content = buffer.getvalue()
    res, _ = ingest_bytes(tmp_path, content)
    cols = {c["name"]: c for c in res.columns}
    assert [cols[n]["dtype"] for n in ("y", "few", "many", "frac")] == ["double"] * 4
    assert cols["y"]["stats"]["whole_numbers"] is True and cols["few"]["stats"]["whole_numbers"] is True
    assert "whole_numbers" not in cols["many"]["stats"] and "whole_numbers" not in cols["frac"]["stats"]
    assert [ingest.infer_task(cols[n]) for n in ("y", "few", "many", "frac")] == \
        ["classification", "classification", "regression", "regression"]
    one = ingest.summarise_column("y", pa.chunked_array([pa.array([0.0, 1.0, None, float("nan"), 1.0])]))
    assert one["stats"]["whole_numbers"] is True
    assert "whole_numbers" not in ingest.summarise_column("y", pa.chunked_array([pa.array([0.0, 0.5])]))["stats"]


def test_an_ingest_its_caller_gave_up_on_stops_between_batches_and_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 1 << 10)  # many small batches
    src = tmp_path / "big.csv"
    src.write_text("a,b\n" + "".join(f"{i},{i % 7}\n" for i in range(20_000)))
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) >= 3

    dest = tmp_path / "out.parquet"
    with pytest.raises(ingest.Cancelled):
        ingest.ingest(src, dest, max_columns=10, cancelled=cancelled)
    assert len(asked) == 3 and not dest.exists()
    # without a caller that gives up, the same file goes through whole
    assert ingest.ingest(src, dest, max_columns=10).n_rows == 20_000
