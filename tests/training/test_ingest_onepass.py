"""One pass of ingest: the summaries built from the row groups as they are written equal those of the whole
columns; parsing runs ahead in a thread whose errors arrive in order; memory and row groups stay bounded."""

import threading

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from service.training import ingest


def mixed_csv(path, n=3000):
    """Every kind of column, with missing cells, NaN and infinities, over many CSV blocks and row groups."""
    rng = np.random.default_rng(1)
    floats = rng.standard_normal(n).round(3)
    floats[::97] = np.nan
    floats[5] = np.inf
    table = pa.table({
        "row_id": np.arange(n),
        "count": pa.array([None if i % 50 == 0 else int(v) for i, v in enumerate(rng.integers(-3, 4, n))]),
        "big": rng.integers(0, 10**12, n),
        "x": floats,
        "flag": rng.integers(0, 2, n).astype(bool),
        "colour": rng.choice(["red", "green", "blue"], n),
        "day": [f"2020-01-{1 + i % 28:02d}" for i in range(n)],
        "note": [f"free text number {i} of many" for i in range(n)],
        "empty": pa.nulls(n, pa.float64()),
    })
    pacsv.write_csv(table, path)
    return path


def whole_column_summaries(dest, n_rows):
    table = pq.read_table(dest)
    return [ingest.summarise_column(name, table.column(name), n_rows) for name in table.column_names]


def same(a, b):
    """Summaries equal, the moments to floating-point rounding (they are summed group by group)."""
    assert [c["name"] for c in a] == [c["name"] for c in b]
    for x, y in zip(a, b, strict=True):
        sx, sy = dict(x["stats"]), dict(y["stats"])
        for key in ("mean", "std"):
            assert (sx.pop(key, None) is None) == (sy.get(key) is None), (x["name"], key)
            if sy.get(key) is not None:
                assert sx.get(key, sy[key]) == pytest.approx(sy.pop(key), rel=1e-12, abs=1e-12)
            sy.pop(key, None)
        assert {**x, "stats": sx} == {**y, "stats": sy}, x["name"]


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 500)


def test_summaries_of_the_pass_equal_those_of_the_whole_columns(tmp_path, small_groups):
    src, dest = mixed_csv(tmp_path / "mixed.csv"), tmp_path / "out.parquet"
    result = ingest.ingest(src, dest, max_columns=100)
    assert pq.ParquetFile(dest).metadata.num_row_groups >= 6
    same(result.columns, whole_column_summaries(dest, result.n_rows))
    kinds = {c["name"]: c["kind"] for c in result.columns}
    assert kinds == {"row_id": "identifier", "count": "numeric", "big": "numeric", "x": "numeric", "flag": "boolean",
                     "colour": "categorical", "day": "datetime", "note": "text", "empty": "numeric"}
    x = next(c for c in result.columns if c["name"] == "x")
    assert x["n_missing"] == 31 and x["stats"]["n_infinite"] == 1


def test_columns_past_the_held_budget_are_summarised_from_the_stored_file_alike(tmp_path, small_groups,
                                                                               monkeypatch):
    src = mixed_csv(tmp_path / "mixed.csv")
    held = ingest.ingest(src, tmp_path / "held.parquet", max_columns=100)
    monkeypatch.setattr(ingest, "SUMMARY_HELD_BYTES", 20_000)  # only the small columns stay held
    dropped = []
    real_drop = ingest._ColumnSummary.drop
    monkeypatch.setattr(ingest._ColumnSummary, "drop", lambda self: (dropped.append(self.name), real_drop(self)))
    bounded = ingest.ingest(src, tmp_path / "bounded.parquet", max_columns=100)
    assert {"big", "note", "row_id"} <= set(dropped) and "flag" not in dropped
    same(bounded.columns, held.columns)


def test_a_parquet_upload_is_summarised_in_the_same_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 700)
    src = tmp_path / "in.parquet"
    pq.write_table(pacsv.read_csv(mixed_csv(tmp_path / "mixed.csv")), src, row_group_size=300)
    result = ingest.ingest(src, tmp_path / "out.parquet", max_columns=100)
    stored = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert stored.num_row_groups == 5 and stored.row_group(0).num_rows == 700  # read and written 700 rows at a time
    same(result.columns, whole_column_summaries(tmp_path / "out.parquet", result.n_rows))


def test_a_row_group_closes_at_its_byte_bound_too(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest, "ROW_GROUP_BYTES", 16_000)
    src = mixed_csv(tmp_path / "mixed.csv")
    ingest.ingest(src, tmp_path / "out.parquet", max_columns=100)
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert meta.num_row_groups > 3 and max(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) < 1000


def test_a_parse_error_late_in_the_file_arrives_in_order_and_leaves_nothing(tmp_path, small_groups):
    src = tmp_path / "ragged.csv"
    src.write_bytes(b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(5000)) + b"1,2,3\n")
    before = threading.active_count()
    with pytest.raises(ingest.DataError, match="ragged rows"):
        ingest.ingest(src, tmp_path / "out.parquet", max_columns=10)
    assert not (tmp_path / "out.parquet").exists()
    assert threading.active_count() == before  # the parsing thread has ended


def test_a_cancelled_ingest_stops_its_parsing_thread(tmp_path, small_groups):
    src = mixed_csv(tmp_path / "mixed.csv")
    asked = []
    before = threading.active_count()
    with pytest.raises(ingest.Cancelled):
        ingest.ingest(src, tmp_path / "out.parquet", max_columns=100,
                      cancelled=lambda: asked.append(1) or len(asked) > 3)
    assert threading.active_count() == before and not (tmp_path / "out.parquet").exists()


def test_numbers_are_stored_without_dictionary_pages_and_text_with_them(tmp_path):
    src = mixed_csv(tmp_path / "mixed.csv")
    ingest.ingest(src, tmp_path / "out.parquet", max_columns=100)
    group = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).has_dictionary_page for i in range(group.num_columns)}
    assert encodings["colour"] and not encodings["x"] and not encodings["big"]
