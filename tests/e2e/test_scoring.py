"""POST /models/{id}/predict: batch scoring of CSV, TSV and Parquet files over real HTTP against `mlps serve`."""

import csv
import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.helpers import dataset_path, problem
from tests.live import admin_key, trained_iris_job

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]


@pytest.fixture(scope="module")
def model_id(server) -> str:
    return trained_iris_job(str(server.base_url), admin_key(server.data_dir))["model_id"]


def score(server, model_id: str, content: bytes, filename: str = "rows.csv"):
    return server.post(f"/models/{model_id}/predict", files={"file": (filename, content, "text/csv")})


def scored_rows(resp) -> list[dict[str, str]]:
    """The rows of a 200 text/csv answer."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(resp.text, newline="")))


def test_a_csv_comes_back_with_its_columns_and_the_predictions(server, model_id):
    text = ("id,sepal_length,sepal_width,petal_length,petal_width,note\n"
            "a,5.1,3.5,1.4,0.2,\"first, with a comma\"\n"
            "b,6.7,3.0,,2.3,missing petal_length\n"
            "c,5.9,3.0,4.2,1.5,\n")
    resp = score(server, model_id, text.encode())
    rows = scored_rows(resp)
    assert resp.headers["x-row-count"] == "3"
    assert list(rows[0]) == ["id", *FEATURES, "note", "prediction", *(f"p_{label}" for label in LABELS)]
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[0]["note"] == "first, with a comma"
    records = [{f: (float(r[f]) if r[f] else None) for f in FEATURES} for r in rows]
    expected = server.post("/predict", json={"model_id": model_id, "records": records}).json()
    assert [r["prediction"] for r in rows] == expected["predictions"]
    for row, probs in zip(rows, expected["probabilities"], strict=True):
        assert [float(row[f"p_{label}"]) for label in LABELS] == pytest.approx([probs[lb] for lb in LABELS],
                                                                               rel=1e-6)


def test_a_large_file_is_scored_in_batches_and_in_order(server, model_id):
    n = 150_000  # more than two batches of 65,536 rows
    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 7.0, size=(n, 4)).round(1)
    table = pa.table({"row": np.arange(n), **{f: values[:, j] for j, f in enumerate(FEATURES)}})
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    with server.stream("POST", f"/models/{model_id}/predict",
                       files={"file": ("big.csv", buf.getvalue(), "text/csv")}) as resp:
        assert resp.status_code == 200
        body = b"".join(resp.iter_bytes())
    scored = pacsv.read_csv(io.BytesIO(body))
    assert scored.num_rows == n == int(resp.headers["x-row-count"])
    assert scored.column("row").to_pylist() == list(range(n))
    assert set(scored.column("prediction").to_pylist()) <= set(LABELS)
    sums = sum(scored.column(f"p_{label}").to_numpy() for label in LABELS)
    assert np.allclose(sums, 1.0, atol=1e-5)


def test_tsv_and_parquet_files_score_like_csv(server, model_id):
    iris = pacsv.read_csv(dataset_path("iris.csv")).slice(0, 20)
    tsv = io.BytesIO()
    pacsv.write_csv(iris, tsv, write_options=pacsv.WriteOptions(delimiter="\t"))
    parquet = io.BytesIO()
    pq.write_table(iris, parquet)
    by_csv = score(server, model_id, dataset_path("iris.csv").read_bytes())
    by_tsv = score(server, model_id, tsv.getvalue(), "iris.tsv")
    by_parquet = score(server, model_id, parquet.getvalue(), "iris.parquet")
    predictions = [list(csv.DictReader(io.StringIO(r.text))) for r in (by_csv, by_tsv, by_parquet)]
    first = [row["prediction"] for row in predictions[0][:20]]
    assert [row["prediction"] for row in predictions[1]] == first == [row["prediction"] for row in predictions[2]]


def _late_bad_value() -> bytes:
    rows = ["5.1,3.5,1.4,0.2"] * 100_000 + ["5.1,3.5,wide,0.2"] + ["5.1,3.5,1.4,0.2"] * 10
    return ("sepal_length,sepal_width,petal_length,petal_width\n" + "\n".join(rows) + "\n").encode()


@pytest.mark.parametrize(("content", "fragment", "column"), [
    (b"sepal_length,sepal_width\n1,2\n", "lacks the model's feature column(s) 'petal_length', 'petal_width'",
     "petal_length"),
    (b"sepal_length,sepal_width,petal_length,petal_width\n1,2,3,x\n", "column 'petal_width' expects a number, got 'x'",
     "petal_width"),
    (_late_bad_value(), "column 'petal_length' expects a number, got 'wide'", "petal_length"),
    (b"sepal_length,sepal_width,petal_length,petal_width\n", "header but no data rows", None),
    (b"sepal_length,sepal_width,petal_length,petal_width,petal_width\n1,2,3,4,5\n", "appears more than once",
     "petal_width"),
    (b"", "the file is empty", None),
    (b"PK\x03\x04not really an npz", "for arrays send 'inputs' to POST /predict", None),
    (b"b\xeaK", "not UTF-8 text", None),
], ids=["missing-column", "bad-value", "bad-value-far-down", "header-only", "duplicate-column", "empty", "npz",
        "short-not-utf8"])
def test_bad_files_are_422_before_any_row_is_sent(server, model_id, content, fragment, column):
    body = problem(score(server, model_id, content), 422)
    assert fragment in body["detail"]
    assert body["errors"][0]["field"] == "file"
    if column:
        assert body["errors"][0]["column"] == column


def test_unknown_model_is_404_and_a_missing_file_part_is_422(server, model_id):
    problem(score(server, "mdl_0000000000000000", b"a\n1\n"), 404, "mdl_0000000000000000", field="model_id")
    body = problem(server.post(f"/models/{model_id}/predict", files={"other": ("x.csv", b"a\n1\n")}), 422)
    assert "no file in the upload" in body["detail"]


def test_scoring_leaves_no_temporary_files(server, model_id, tmp_path_factory):
    problem(score(server, model_id, b"sepal_length\n1\n"), 422, "lacks the model's feature column(s)")
    assert len(scored_rows(score(server, model_id, dataset_path("iris.csv").read_bytes()))) == 150
    leftovers = list(tmp_path_factory.getbasetemp().glob("serve*/var/tmp/*.score"))
    assert leftovers == []


def test_formula_cells_and_headers_come_back_as_text_unless_asked_otherwise(server, model_id):
    text = ("sepal_length,sepal_width,petal_length,petal_width,note,@total,-2\n"
            "5.1,3.5,1.4,0.2,\"=cmd|' /C calc'!A0\",+1+1,-2.5\n"
            "6.7,3.0,5.2,2.3,\"\tTAB\",@SUM(A1),x\n"
            "5.9,3.0,4.2,1.5,plain,-7,=1\n")
    rows = scored_rows(score(server, model_id, text.encode()))
    assert list(rows[0])[4:7] == ["note", "'@total", "-2"]  # a header that is a number stays as it is
    assert [r["note"] for r in rows] == ["'=cmd|' /C calc'!A0", "'\tTAB", "plain"]
    assert [r["'@total"] for r in rows] == ["'+1+1", "'@SUM(A1)", "-7"]  # numbers are not formulas
    assert [r["-2"] for r in rows] == ["-2.5", "x", "'=1"]
    raw = server.post(f"/models/{model_id}/predict", params={"escape_formulas": "false"},
                      files={"file": ("rows.csv", text.encode(), "text/csv")})
    assert [r["note"] for r in scored_rows(raw)][0] == "=cmd|' /C calc'!A0"


def test_a_semicolon_file_with_decimal_commas_scores_like_its_plain_twin(server, model_id):
    plain = "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n5.9,3.0,4.2,1.5\n"
    european = "\n".join(";".join(f'"{v.replace(".", ",")}"' if "." in v else v for v in line.split(","))
                         for line in plain.strip().splitlines()) + "\n"
    predictions = [[r["prediction"] for r in scored_rows(score(server, model_id, text.encode()))]
                   for text in (plain, european)]
    assert predictions[0] == predictions[1] and len(predictions[0]) == 3
