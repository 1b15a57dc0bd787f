"""The hostile-input catalogue: every bad upload, spec, training set and predict request gets a clear 4xx
(or a failed job with a readable error) naming the field or column, and nothing stored before is harmed."""

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import bearer, dataset_path, make_key, problem, upload

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
IRIS_TRAINING = {"model": {"hidden_layers": [8]}, "training": {"epochs": 5}}


def post_json(client, url: str, payload, raw: dict[str, str] | None = None):
    """POST JSON as written by Python (NaN and Infinity literals included); `raw` swaps marker strings for
    literal JSON text such as 1e999, which no Python value serialises to."""
    text = json.dumps(payload)
    for marker, literal in (raw or {}).items():
        text = text.replace(json.dumps(marker), literal)
    return client.post(url, content=text.encode(), headers={"content-type": "application/json"})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- still serving, nothing harmed


@dataclass
class Before:
    """What the service held before the hostile request: a data set (and optionally a model's answer)."""

    dataset: dict
    preview: dict
    file: Path
    file_sha256: str
    model_id: str | None = None
    prediction: dict | None = None


def remember(client, settings, worker=None) -> Before:
    """Upload iris (and, given a worker, train a small model on it) and note what must not change."""
    ds = upload(client, "iris.csv").json()
    file = settings.data_dir / "datasets" / f"{ds['id']}.parquet"
    before = Before(dataset=ds, preview=client.get(f"/datasets/{ds['id']}/preview").json(), file=file,
                    file_sha256=sha256(file))
    if worker is not None:
        resp = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species", **IRIS_TRAINING})
        assert worker.run_once() == resp.json()["id"]
        job = client.get(f"/jobs/{resp.json()['id']}").json()
        assert job["status"] == "succeeded", job["error"]
        before.model_id = job["model_id"]
        before.prediction = client.post("/predict", json={"model_id": job["model_id"],
                                                          "records": [IRIS_RECORD]}).json()
    return before


def assert_unharmed(client, settings, before: Before) -> None:
    """The service still answers, the earlier data set is intact, the earlier model predicts the same."""
    assert client.get("/healthz").json() == {"status": "ok"}
    listing = client.get("/datasets")
    assert listing.status_code == 200
    assert before.dataset["id"] in [d["id"] for d in listing.json()["items"]]
    assert client.get(f"/datasets/{before.dataset['id']}").json() == before.dataset
    assert client.get(f"/datasets/{before.dataset['id']}/preview").json() == before.preview
    assert sha256(before.file) == before.file_sha256
    assert list((settings.data_dir / "tmp").iterdir()) == []
    if before.model_id is not None:
        again = client.post("/predict", json={"model_id": before.model_id, "records": [IRIS_RECORD]})
        assert again.status_code == 200 and again.json() == before.prediction


@pytest.fixture
def before(client, settings) -> Before:
    return remember(client, settings)


@pytest.fixture
def before_model(client, settings, worker) -> Before:
    return remember(client, settings, worker)


# ---------------------------------------------------------------- uploads


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _wide(n: int) -> bytes:
    return ",".join(f"c{i}" for i in range(n)).encode() + b"\n" + b",".join([b"1"] * n) + b"\n"


LATE = b"a,b\n" + b"1,q\n" * 20_000  # longer than the 64 KiB read to recognise the format

BAD_UPLOADS = [
    pytest.param(b"", "the file is empty", "file", None, id="empty-file"),
    pytest.param(b"sepal_length,species\n", "no data rows", "file", None, id="header-only"),
    pytest.param(b"a,b,c\n1,2,3\n4,5\n", "ragged rows", "file", None, id="ragged-rows"),
    pytest.param(LATE + b"3,caf\xe9\n", "not UTF-8", None, "b", id="not-utf8-past-the-first-64k"),
    pytest.param(bytes(range(256)) * 8, "binary", "file", None, id="binary-garbage"),
    pytest.param(b"a,b\n1,\x002\n", "binary", "file", None, id="nul-byte"),
    pytest.param(LATE + b"3,x\x00y\n", "NUL", None, "b", id="nul-byte-past-the-first-64k"),
    pytest.param(_wide(10_000), "10000 columns; at most 5000", "file", None, id="10000-columns"),
    pytest.param(_wide(300_000), "300000 columns; at most 5000", "file", None, id="300000-columns"),
    pytest.param(b"a,a\n1,2\n", "appears more than once", None, "a", id="duplicate-column-names"),
    pytest.param(b"a,\n1,2\n", "column 2 has an empty name", "file", None, id="empty-column-name"),
    pytest.param(b"\xef\xbb\xbf\n\n", "the first line is empty", "file", None, id="bom-and-blank-lines"),
    pytest.param(b"PAR1" + b"\x00garbage" * 20, "looks like Parquet but could not be read", "file", None,
                 id="parquet-magic-then-garbage"),
    pytest.param(b"PK\x03\x04" + b"garbage" * 20, "looks like .npz but could not be read", "file", None,
                 id="zip-magic-then-garbage"),
    pytest.param(_parquet(pa.table({"a": [[1, 2], [3]]})), "nested", None, "a", id="parquet-nested-column"),
]


@pytest.mark.parametrize(("content", "fragment", "field", "column"), BAD_UPLOADS)
def test_bad_upload_is_422_and_leaves_nothing_behind(client, settings, before, content, fragment, field, column):
    problem(upload(client, "bad.csv", content, status=None), 422, fragment, field=field, column=column)
    assert client.get("/datasets").json()["total"] == 1
    assert sorted(p.name for p in (settings.data_dir / "datasets").iterdir()) == [before.file.name]
    assert_unharmed(client, settings, before)


def test_hostile_file_name_is_only_a_display_name(client, settings, tmp_path, before):
    resp = client.post("/datasets", files={"file": ("../../etc/passwd", b"a,b\n1,2\n")})
    assert resp.status_code == 201 and resp.json()["name"] == "passwd"
    named = client.post("/datasets", files={"file": ("../../etc/passwd", b"a,b\n1,2\n")},
                        data={"name": "../x <script>\x07"})
    assert named.status_code == 201 and named.json()["name"] == "../x <script>"  # a given name is shown as given
    long = client.post("/datasets", files={"file": ("n" * 1000 + ".csv", b"a,b\n1,2\n")})
    assert long.status_code == 201 and len(long.json()["name"]) == 255
    outside = [p for p in tmp_path.rglob("*") if settings.data_dir not in (p, *p.parents)]
    assert outside == []
    stored = sorted(p.name for p in (settings.data_dir / "datasets").iterdir())
    assert stored == sorted(f"{d['id']}.parquet" for d in (before.dataset, resp.json(), named.json(), long.json()))
    assert_unharmed(client, settings, before)


# The format is recognised from the content, never from the name (README, "Files"): a mismatched
# extension with valid content is stored in the format the bytes really have.
@pytest.mark.parametrize(("filename", "content", "fmt"), [
    pytest.param("data.parquet", b"x,y\n1,a\n2,b\n", "csv", id="csv-named-parquet"),
    pytest.param("data.csv", _parquet(pa.table({"x": [1, 2], "y": ["a", "b"]})), "parquet", id="parquet-named-csv"),
    pytest.param("data.npz", b"x\ty\n1\ta\n2\tb\n", "tsv", id="tsv-named-npz"),
])
def test_mismatched_extension_is_read_by_content(client, settings, before, filename, content, fmt):
    ds = upload(client, filename, content).json()
    assert ds["format"] == fmt and ds["n_rows"] == 2 and [c["name"] for c in ds["columns"]] == ["x", "y"]
    rows = client.get(f"/datasets/{ds['id']}/preview").json()["rows"]
    assert rows == [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]
    assert_unharmed(client, settings, before)


def test_a_1mb_cell_is_stored_whole_but_summarised_short(client, settings, before):
    cell = "x" * 1_000_000
    ds = upload(client, "big.csv", f"a,b\n1,{cell}\n2,y\n".encode()).json()
    quoted = [t["value"] for t in ds["columns"][1]["stats"]["top"] if t["value"].startswith("x")]
    assert quoted == ["x" * 100 + "… (1000000 characters)"]  # the description stays small ...
    assert len(client.get("/datasets").content) < 20_000
    rows = client.get(f"/datasets/{ds['id']}/preview").json()["rows"]
    assert rows[0]["b"] == cell  # ... while the data keep every byte
    assert_unharmed(client, settings, before)


def test_nan_and_infinity_in_a_file_are_counted_as_missing_and_infinite(client, settings, before):
    ds = upload(client, "nan.csv", b"a,b\n1,nan\n2,inf\n3,-inf\n4,5\n").json()
    b = ds["columns"][1]
    assert b["kind"] == "numeric" and b["n_missing"] == 1 and b["stats"]["n_infinite"] == 2
    assert b["stats"]["min"] == b["stats"]["max"] == 5.0
    assert_unharmed(client, settings, before)


def _multipart(content: bytes, boundary: str = "hostile-boundary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()


FULL_BODY = _multipart(b"a,b\n" + b"1,2\n" * 1000)


@pytest.mark.parametrize(("body", "fragment"), [
    pytest.param(FULL_BODY[: len(FULL_BODY) // 2], "cut off before its end", id="cut-in-the-file-data"),
    pytest.param(FULL_BODY[:-len(b"\r\n--hostile-boundary--\r\n")], "cut off before its end",
                 id="no-closing-boundary"),
    pytest.param(FULL_BODY[:40], "cut off before its end", id="cut-in-the-part-headers"),
    pytest.param(FULL_BODY.replace(b"x.csv", b"n" * 5000 + b".csv"), "each part header (the file name included) "
                 "under 4 KiB", id="5000-character-file-name"),
    pytest.param(b"--other\r\n" + FULL_BODY, "could not be read", id="wrong-boundary"),
])
def test_malformed_multipart_stream_is_422(client, settings, before, body, fragment):
    resp = client.post("/datasets", content=body,
                       headers={"content-type": "multipart/form-data; boundary=hostile-boundary"})
    problem(resp, 422, fragment, field="file")
    assert client.get("/datasets").json()["total"] == 1
    assert_unharmed(client, settings, before)


# ---------------------------------------------------------------- job specs


BAD_SPECS = [
    pytest.param({"model": {"hidden_layers": [10**9]}}, None, "model.hidden_layers.0", "less than or equal to 16384",
                 id="hidden-width-1e9"),
    pytest.param({"model": {"hidden_layers": [-3]}}, None, "model.hidden_layers.0", "greater than or equal to 1",
                 id="hidden-width-negative"),
    pytest.param({"model": {"hidden_layers": [4] * 1000}}, None, "model.hidden_layers", "at most 32 items",
                 id="1000-hidden-layers"),
    pytest.param({"training": {"epochs": 0}}, None, "training.epochs", "greater than or equal to 1", id="epochs-0"),
    pytest.param({"training": {"epochs": "@big"}}, {"@big": "1" + "0" * 400}, "training.epochs",
                 "less than or equal to 100000", id="epochs-10^400"),
    pytest.param({"training": {"epochs": 2.5}}, None, "training.epochs", "fractional part", id="epochs-fractional"),
    pytest.param({"training": {"epochs": "ten"}}, None, "training.epochs", "valid integer", id="epochs-text"),
    pytest.param({"training": {"batch_size": 0}}, None, "training.batch_size", "greater than or equal to 1",
                 id="batch-size-0"),
    pytest.param({"training": {"batch_size": -32}}, None, "training.batch_size", "greater than or equal to 1",
                 id="batch-size-negative"),
    pytest.param({"training": {"learning_rate": -0.1}}, None, "training.learning_rate", "greater than 0",
                 id="learning-rate-negative"),
    pytest.param({"training": {"learning_rate": float("nan")}}, None, "training.learning_rate", "finite number",
                 id="learning-rate-NaN"),
    pytest.param({"training": {"learning_rate": float("inf")}}, None, "training.learning_rate", "finite number",
                 id="learning-rate-Infinity"),
    pytest.param({"training": {"learning_rate": float("-inf")}}, None, "training.learning_rate", "finite number",
                 id="learning-rate-minus-Infinity"),
    pytest.param({"training": {"learning_rate": "@huge"}}, {"@huge": "1e999"}, "training.learning_rate",
                 "finite number", id="learning-rate-1e999"),
    pytest.param({"training": {"learning_rate": 1e300}}, None, "training.learning_rate", "less than or equal to 10",
                 id="learning-rate-1e300"),
    pytest.param({"model": {"dropout": float("nan")}}, None, "model.dropout", "finite number", id="dropout-NaN"),
    pytest.param({"training": {"seed": -1}}, None, "training.seed", "greater than or equal to 0", id="seed-negative"),
    pytest.param({"max_runtime_s": 0}, None, "max_runtime_s", "greater than or equal to 1", id="max-runtime-0"),
    pytest.param({"colour": "red"}, None, "colour", "unknown field", id="unknown-top-level-field"),
    pytest.param({"model": {"layers": [8]}}, None, "model.layers", "unknown field", id="unknown-model-field"),
    pytest.param({"training": {"lr_schedule": {"type": "step", "every": 3}}}, None, "training.lr_schedule",
                 "unknown field", id="unknown-schedule-field"),
    pytest.param({"model": {"hidden_layers": "64"}}, None, "model.hidden_layers", "valid list",
                 id="hidden-layers-a-string"),
    pytest.param({"model": []}, None, "model", "valid dictionary", id="model-a-list"),
    pytest.param({"target": 5}, None, "target", "valid string", id="target-a-number"),
    pytest.param({"features": "sepal_length"}, None, "features", "valid list", id="features-a-string"),
    pytest.param({"features": ["sepal_length"] * 100_000}, None, "features", "at most 10000 items",
                 id="100000-features"),
    pytest.param({"features": ["species"]}, None, "features.0", "cannot also be a feature",
                 id="target-also-a-feature"),
    pytest.param({"target": ["petal_width", "sepal_length"], "features": ["petal_length", "sepal_length"]}, None,
                 "features.1", "cannot also be a feature", id="one-of-two-targets-also-a-feature"),
]


@pytest.mark.parametrize(("patch", "raw", "field", "fragment"), BAD_SPECS)
def test_bad_spec_is_422_naming_the_field(client, settings, before, patch, raw, field, fragment):
    spec = {"dataset_id": before.dataset["id"], "target": "species", **patch}
    problem(post_json(client, "/jobs", spec, raw), 422, fragment, field=field)
    assert client.get("/jobs").json()["total"] == 0
    assert_unharmed(client, settings, before)


@pytest.mark.parametrize(("body", "status", "fragment", "field"), [
    pytest.param(b"[]", 422, "valid dictionary", "body", id="a-list"),
    pytest.param(b"", 422, "Field required", "body", id="empty"),
    pytest.param(b'"dataset"', 422, "valid dictionary", "body", id="a-string"),
    pytest.param(b"{not json", 422, "JSON decode error", "", id="not-json"),
])
def test_spec_body_that_is_not_an_object_is_422(client, settings, before, body, status, fragment, field):
    resp = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    problem(resp, status, fragment, field=field)
    assert_unharmed(client, settings, before)


def test_one_class_only_is_refused_at_submit(client, settings, before):
    ds = upload(client, "one.csv", b"x,label\n" + b"".join(f"{i},same\n".encode() for i in range(20))).json()
    resp = client.post("/jobs", json={"dataset_id": ds["id"], "target": "label"})
    problem(resp, 422, "needs at least two classes", field="target", column="label")
    assert client.get("/jobs").json()["total"] == 0
    assert_unharmed(client, settings, before)


# ---------------------------------------------------------------- training data, on the real worker


def _rows(fmt: str, n: int) -> bytes:
    return "".join(fmt.format(i=i, odd=i % 2) for i in range(n)).encode()


@pytest.mark.parametrize("content", [
    pytest.param(b"x,y\n" + _rows("{i},5.0\n", 40), id="constant-target"),
    pytest.param(b"x,y\n1,2.5\n", id="one-row"),
    pytest.param(b"x,y\n1,2.5\n2,\n3,\n", id="one-row-with-a-target"),
])
def test_a_regression_target_that_never_varies_is_refused_at_submit(client, settings, before, content):
    ds = upload(client, "train.csv", content).json()
    resp = client.post("/jobs", json={"dataset_id": ds["id"], "target": "y"})
    problem(resp, 422, "has 1 distinct value(s); regression needs a target that varies", field="target", column="y")
    assert client.get("/jobs").json()["total"] == 0
    assert_unharmed(client, settings, before)


FAILING_TRAINING = [
    pytest.param(dataset_path("iris.csv").read_bytes(),
                 {"target": "species", "training": {"epochs": 3, "class_weights": {"Iris-rose": 2.0}}},
                 "class_weights names label(s) ['Iris-rose']", id="class-weight-for-an-unknown-label"),
    pytest.param(dataset_path("diabetes.csv").read_bytes(),
                 {"target": "progression", "model": {"type": "mlp"},
                  "training": {"optimizer": "sgd", "learning_rate": 10.0, "epochs": 50}},
                 "loss became NaN at epoch", id="diverging-learning-rate"),
]


@pytest.mark.parametrize(("content", "spec", "fragment"), FAILING_TRAINING)
def test_unusable_training_data_fails_the_job_once_with_a_clear_error(client, settings, worker, before_model,
                                                                        content, spec, fragment):
    ds = upload(client, "train.csv", content).json()
    resp = client.post("/jobs", json={"dataset_id": ds["id"], **spec})
    assert resp.status_code == 202, resp.text
    assert worker.run_once() == resp.json()["id"]
    job = client.get(f"/jobs/{resp.json()['id']}").json()
    assert job["status"] == "failed" and job["attempts"] == 1 and job["model_id"] is None, job
    assert fragment in job["error"], job["error"]
    assert "Traceback" not in job["error"] and "internal error" not in job["error"]
    assert worker.run_once() is None  # not retried
    assert client.get(f"/jobs/{job['id']}").json()["attempts"] == 1
    assert_unharmed(client, settings, before_model)


def test_nan_and_infinity_in_features_are_imputed_like_missing_values(client, settings, worker, before_model):
    odd = {3: "inf", 4: "nan", 5: "-inf"}
    rows = "".join(f"{odd.get(i, i)},{i % 2}\n" for i in range(40))
    ds = upload(client, "nan.csv", f"x,y\n{rows}".encode()).json()
    assert ds["columns"][0]["n_missing"] == 1 and ds["columns"][0]["stats"]["n_infinite"] == 2
    resp = client.post("/jobs", json={"dataset_id": ds["id"], "target": "y", "training": {"epochs": 5}})
    assert worker.run_once() == resp.json()["id"]
    job = client.get(f"/jobs/{resp.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["features"][0]["name"] == "x"
    # the three odd values are filled in with the median of the others (0, 1, 2, 6, ..., 39), as a missing one is
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/models/{job['model_id']}/download").content))
    (x,) = json.loads(archive.read("model.json"))["preprocessing"]["features"]
    finite = np.array([i for i in range(40) if i not in odd], dtype=float)
    filled = np.concatenate([finite, np.full(3, np.median(finite))])
    assert x["fill"] == np.median(finite) and x["mean"] == pytest.approx(filled.mean())
    assert x["scale"] == pytest.approx(filled.std())
    answer = client.post("/predict", json={"model_id": job["model_id"], "records": [{"x": None}, {"x": 7}]})
    assert answer.status_code == 200 and set(answer.json()["predictions"]) <= {0, 1}
    assert_unharmed(client, settings, before_model)


# ---------------------------------------------------------------- predict


def _records(*records: dict) -> list[dict]:
    return [dict(IRIS_RECORD, **r) for r in records]


BAD_PREDICTS = [
    pytest.param({"records": [{k: v for k, v in IRIS_RECORD.items() if k != "petal_width"}]}, None, 422,
                 "record 0: column 'petal_width' is missing", "petal_width", id="missing-column"),
    pytest.param({"records": [{}]}, None, 422, "column 'sepal_length' is missing", "sepal_length",
                 id="empty-record"),
    pytest.param({"records": _records({}, {"sepal_length": "wide"})}, None, 422,
                 "record 1: column 'sepal_length' expects a number, got 'wide'", "sepal_length",
                 id="text-for-a-number"),
    pytest.param({"records": _records({"sepal_length": "5.1"})}, None, 422, "expects a number, got '5.1'",
                 "sepal_length", id="numeric-text-for-a-number"),
    pytest.param({"records": _records({"sepal_length": True})}, None, 422, "expects a number, got True",
                 "sepal_length", id="boolean-for-a-number"),
    pytest.param({"records": _records({"sepal_length": [1, 2]})}, None, 422, "expects a number, got [1, 2]",
                 "sepal_length", id="list-for-a-number"),
    pytest.param({"records": _records({"sepal_length": "y" * 100_000})}, None, 422, "expects a number, got 'yyy",
                 "sepal_length", id="100kB-text-for-a-number"),
    pytest.param({"records": _records({"petal_length": float("nan")})}, None, 422,
                 "column 'petal_length' is NaN or infinite; send null", "petal_length", id="NaN"),
    pytest.param({"records": _records({"petal_length": float("-inf")})}, None, 422,
                 "column 'petal_length' is NaN or infinite; send null", "petal_length", id="minus-Infinity"),
    pytest.param({"records": _records({"petal_length": "@huge"})}, {"@huge": "1e999"}, 422,
                 "column 'petal_length' is NaN or infinite", "petal_length", id="1e999"),
    pytest.param({"records": _records({"petal_length": "@big"})}, {"@big": "1" + "0" * 400}, 422,
                 "column 'petal_length' is out of range", "petal_length", id="integer-10^400"),
    pytest.param({"records": []}, None, 422, "at least 1 item", None, id="empty-list"),
    pytest.param({"records": [1, 2]}, None, 422, "valid dictionary", None, id="records-not-objects"),
    pytest.param({"records": {"sepal_length": 1}}, None, 422, "valid list", None, id="records-an-object"),
    pytest.param({"inputs": [[1, 2, 3, 4]]}, None, 422, "send 'records'", None, id="inputs-for-a-table-model"),
    pytest.param({"records": [IRIS_RECORD], "colour": "red"}, None, 422, "unknown field", None,
                 id="unknown-field"),
    pytest.param({"model_id": "mdl_0000000000000000", "records": [IRIS_RECORD]}, None, 404,
                 "no model with id 'mdl_0000000000000000'", None, id="unknown-model-id"),
    pytest.param({"model_id": "../../etc/passwd", "records": [IRIS_RECORD]}, None, 404, "no model with id",
                 None, id="model-id-a-path"),
    pytest.param({"model_id": "m" * 65, "records": [IRIS_RECORD]}, None, 422, "at most 64 characters", None,
                 id="model-id-too-long"),
]


@pytest.mark.parametrize(("patch", "raw", "status", "fragment", "column"), BAD_PREDICTS)
def test_bad_predict_request_is_4xx_naming_the_column(client, settings, before_model, patch, raw, status, fragment,
                                                       column):
    payload = {"model_id": before_model.model_id, **patch}
    body = problem(post_json(client, "/predict", payload, raw), status, fragment, column=column)
    assert len(json.dumps(body)) < 2000  # a hostile value is never echoed back whole
    assert_unharmed(client, settings, before_model)


def test_too_many_records_is_422_stating_the_limit(client, settings, before_model):
    settings.max_predict_records = 3
    resp = client.post("/predict", json={"model_id": before_model.model_id, "records": [IRIS_RECORD] * 4})
    problem(resp, 422, "4 records in one request; at most 3 are accepted", field="records")
    assert client.post("/predict", json={"model_id": before_model.model_id,
                                         "records": [IRIS_RECORD] * 3}).status_code == 200
    assert_unharmed(client, settings, before_model)


def test_extra_columns_are_ignored(client, settings, before_model):
    """Scoring rows that still carry an id or the target itself is normal; unknown keys do not change the answer."""
    extra = dict(IRIS_RECORD, species="Iris-virginica", row_id=17, note=None)
    resp = client.post("/predict", json={"model_id": before_model.model_id, "records": [extra]})
    assert resp.status_code == 200 and resp.json() == before_model.prediction
    assert_unharmed(client, settings, before_model)


@pytest.mark.parametrize("request_", ["predict", "embed", "score", "download", "dataset", "submit"])
def test_another_owners_model_or_data_set_is_404(client, settings, before_model, request_):
    from fastapi.testclient import TestClient

    with TestClient(client.app, headers=bearer(make_key(settings, "mallory"))) as other:
        model, ds = before_model.model_id, before_model.dataset["id"]
        resp = {
            "predict": lambda: other.post("/predict", json={"model_id": model, "records": [IRIS_RECORD]}),
            "embed": lambda: other.post(f"/models/{model}/embed", json={"records": [IRIS_RECORD]}),
            "score": lambda: other.post(f"/models/{model}/predict",
                                        files={"file": ("x.csv", dataset_path("iris.csv").read_bytes())}),
            "download": lambda: other.get(f"/models/{model}/download"),
            "dataset": lambda: other.get(f"/datasets/{ds}/preview"),
            "submit": lambda: other.post("/jobs", json={"dataset_id": ds, "target": "species"}),
        }[request_]()
    if request_ == "submit":
        problem(resp, 404, "no data set with id", field="dataset_id")
    elif request_ == "dataset":
        problem(resp, 404, "no data set with id")
    else:
        problem(resp, 404, f"no model with id '{model}'", field="model_id")
    assert_unharmed(client, settings, before_model)


def test_json_bodies_over_the_limit_are_413_with_or_without_a_length(client, settings, before):
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    limited = create_app(settings.model_copy(update={"max_json_bytes": 1000}))
    body = json.dumps({"model_id": "mdl_0000000000000000", "records": [IRIS_RECORD] * 50}).encode()
    with TestClient(limited, headers=client.headers) as c:
        problem(c.post("/predict", content=body, headers={"content-type": "application/json"}), 413,
                "request bodies are limited to 1,000 bytes", field="body")
        chunks = (body[i:i + 100] for i in range(0, len(body), 100))  # no Content-Length: counted as it arrives
        problem(c.post("/predict", content=chunks, headers={"content-type": "application/json"}), 413,
                "request bodies are limited to 1,000 bytes", field="body")
        assert c.post("/predict", json={"model_id": "mdl_0000000000000000", "records": [IRIS_RECORD]}
                      ).status_code == 404  # small bodies still go through
    assert_unharmed(client, settings, before)


def test_an_npz_that_unpacks_to_more_than_the_limit_is_refused(client, settings, before):
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((2000, 1000), dtype=np.float32))  # 8 MB of zeros, a few kB packed
    assert len(buf.getvalue()) < 100_000
    with TestClient(create_app(settings.model_copy(update={"max_array_bytes": 1 << 20})),
                    headers=client.headers) as c:
        problem(upload(c, "bomb.npz", buf.getvalue(), status=None), 422, "at most 1,048,576 are accepted", column="X")
    assert_unharmed(client, settings, before)


def test_an_npz_that_compresses_implausibly_well_is_refused_before_unpacking(client, settings, before):
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((4000, 1000), dtype=np.float32))  # 16 MB of zeros, about 16 kB packed
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as archive:
        info = archive.getinfo("X.npy")
    assert info.file_size > 100 * info.compress_size  # under the size limit, over the ratio
    body = problem(upload(client, "bomb.npz", buf.getvalue(), status=None), 422, "decompression bomb", column="X")
    assert f"{info.file_size:,}" in body["detail"]
    # real arrays still go through: random values barely compress
    fine = io.BytesIO()
    np.savez_compressed(fine, X=np.random.default_rng(0).normal(size=(2000, 100)).astype(np.float32))
    assert upload(client, "fine.npz", fine.getvalue()).json()["format"] == "npz"


def test_a_file_of_thousands_of_columns_is_described_column_by_column(client, settings, before):
    columns = 3000
    header = ",".join(f"c{i}" for i in range(columns))
    rows = "\n".join(",".join(str((r * 7 + i) % 11) for i in range(columns)) for r in range(3))
    ds = upload(client, "wide.csv", (header + "\n" + rows + "\n").encode()).json()
    assert ds["n_columns"] == columns and ds["n_rows"] == 3
    assert [c["name"] for c in ds["columns"]] == [f"c{i}" for i in range(columns)]
    assert ds["columns"][5]["stats"]["max"] == max((r * 7 + 5) % 11 for r in range(3))
    assert_unharmed(client, settings, before)


def test_body_that_cannot_be_parsed_names_the_body(client, settings, before):
    deep = "[" * 100_000 + "]" * 100_000
    resp = client.post("/jobs", content=deep.encode(), headers={"content-type": "application/json"})
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["errors"] and resp.json()["errors"][0]["field"] == "body"
    wrong = client.post("/jobs", json={"dataset_id": before.dataset["id"], "target": 5})
    fields = {e["field"] for e in wrong.json()["errors"]}
    assert fields <= {"target", "target.0"} and "target" in fields, fields  # no pydantic union tags
    assert_unharmed(client, settings, before)
