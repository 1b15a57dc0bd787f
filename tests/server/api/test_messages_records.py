"""One status for an unknown id (404, naming the field, in a path or a body), and a /predict answer that names every
column at fault in the records at once, with the records that have it."""

import json

import pytest

from tests.helpers import bearer, make_key, problem, upload

# A numeric, a text and a true/false feature, so that every kind of fault has a column to show up in.
ROWS = "".join(f"{i % 7},{'red' if i % 3 else 'blue'},{'true' if i % 2 else 'false'},{i % 2}\n" for i in range(40))
TABLE = f"x,colour,flag,y\n{ROWS}".encode()
RECORD = {"x": 1.5, "colour": "red", "flag": True}


@pytest.fixture
def dataset(client) -> dict:
    return upload(client, "mixed.csv", TABLE).json()


@pytest.fixture
def model_id(client, worker, dataset) -> str:
    resp = client.post("/jobs", json={"dataset_id": dataset["id"], "target": "y",
                                      "model": {"type": "mlp", "hidden_layers": [4]}, "training": {"epochs": 3}})
    assert worker.run_once() == resp.json()["id"]
    job = client.get(f"/jobs/{resp.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    assert [f["kind"] for f in client.get(f"/models/{job['model_id']}").json()["features"]] == \
        ["numeric", "categorical", "boolean"]
    return job["model_id"]


def _predict(client, model_id: str, records: list[dict]):
    # json.dumps writes NaN as the literal the API accepts; httpx's json= refuses it.
    return client.post("/predict", content=json.dumps({"model_id": model_id, "records": records}).encode(),
                       headers={"content-type": "application/json"})


# ---------------------------------------------------------------- unknown ids: 404, naming the field


@pytest.mark.parametrize("dataset_id", ["ds_ffffffffffffffff", "../../etc/passwd"])
def test_submitting_with_an_unknown_dataset_id_is_404_naming_the_field(client, dataset, dataset_id):
    body = problem(client.post("/jobs", json={"dataset_id": dataset_id, "target": "y"}), 404,
                   f"no data set with id '{dataset_id}'")
    assert body["errors"] == [{"field": "dataset_id", "message": "unknown data set"}]
    assert body["type"] == "/problems/not-found"
    assert client.get("/jobs").json()["total"] == 0
    assert client.get(f"/datasets/{dataset['id']}").json() == dataset


def test_another_owners_dataset_id_in_a_body_is_the_same_404_as_an_unknown_one(client, migrated, dataset):
    from fastapi.testclient import TestClient

    with TestClient(client.app, headers=bearer(make_key(migrated, "mallory"))) as other:
        theirs = problem(other.post("/jobs", json={"dataset_id": dataset["id"], "target": "y"}), 404)
        unknown = problem(other.post("/jobs", json={"dataset_id": "ds_ffffffffffffffff", "target": "y"}), 404)
    assert theirs["errors"] == unknown["errors"] == [{"field": "dataset_id", "message": "unknown data set"}]
    assert client.get("/jobs").json()["total"] == 0


def test_an_unknown_id_is_404_in_a_path_and_in_a_body(client):
    for url in ("/datasets/ds_ffffffffffffffff", "/jobs/job_ffffffffffffffff", "/models/mdl_ffffffffffffffff"):
        problem(client.get(url), 404, "ffffffffffffffff")
    body = problem(client.post("/predict", json={"model_id": "mdl_ffffffffffffffff", "records": [RECORD]}), 404,
                   "no model with id 'mdl_ffffffffffffffff'")
    assert body["errors"] == [{"field": "model_id", "message": "unknown model"}]
    problem(client.post("/models/mdl_ffffffffffffffff/embed", json={"records": [RECORD]}), 404, field="model_id")


def test_filtering_jobs_by_an_unknown_dataset_id_is_an_empty_page(client, dataset):
    """A filter selects; it looks nothing up: an id without jobs (unknown, deleted or another owner's) matches none."""
    client.post("/jobs", json={"dataset_id": dataset["id"], "target": "y"})
    assert client.get("/jobs", params={"dataset_id": dataset["id"]}).json()["total"] == 1
    assert client.get("/jobs", params={"dataset_id": "ds_ffffffffffffffff"}).json() == \
        {"items": [], "total": 0, "limit": 50, "offset": 0}


# ---------------------------------------------------------------- every column at fault, at once


def test_every_missing_column_is_named_with_the_records_that_lack_it(client, model_id):
    records = [dict(RECORD) for _ in range(10)]
    for i in (0, 3, 7):
        del records[i]["x"]
    del records[4]["flag"]
    body = problem(_predict(client, model_id, records), 422, field="records")
    assert body["errors"] == [
        {"field": "records", "column": "x", "records": [0, 3, 7], "count": 3,
         "message": "column 'x' is missing in records 0, 3 and 7 (of 10)"},
        {"field": "records", "column": "flag", "record": 4, "records": [4], "count": 1,
         "message": "record 4: column 'flag' is missing"},
    ]
    assert body["detail"] == ("2 problems in the records: (1) column 'x' is missing in records 0, 3 and 7 (of 10); "
                              "(2) record 4: column 'flag' is missing")
    assert _predict(client, model_id, [RECORD]).status_code == 200


def test_every_column_with_a_wrong_value_is_named_not_just_the_first(client, model_id):
    records = [dict(RECORD) for _ in range(4)]
    records[1]["x"] = "wide"
    records[3]["x"] = "narrow"
    records[2]["colour"] = {"r": 255}
    records[0]["flag"] = "yes"
    records[2]["x"] = float("nan")
    body = problem(_predict(client, model_id, records), 422)
    assert [(e["column"], e["records"], e["message"]) for e in body["errors"]] == [
        ("x", [1, 3], "column 'x' expects a number in records 1 and 3 (of 4); record 1 has 'wide'"),
        ("x", [2], "record 2: column 'x' is NaN or infinite; send null for a missing value (it is filled in as in "
                   "training)"),
        ("colour", [2], "record 2: column 'colour' expects a text category, got an object"),
        ("flag", [0], "record 0: column 'flag' expects true or false, got 'yes'"),
    ]
    assert body["detail"].startswith("4 problems in the records: (1) column 'x' expects a number in records 1 and 3")


def test_ten_thousand_faulty_records_get_a_short_answer(client, model_id):
    records = [{"x": "?"} for _ in range(10_000)]
    records[9_999] = dict(RECORD)
    resp = _predict(client, model_id, records)
    body = problem(resp, 422)
    assert [(e["column"], e["records"], e["count"]) for e in body["errors"]] == [
        ("x", [0, 1, 2, 3, 4], 9_999), ("colour", [0, 1, 2, 3, 4], 9_999), ("flag", [0, 1, 2, 3, 4], 9_999)]
    assert body["errors"][0]["message"] == ("column 'x' expects a number in records 0, 1, 2, 3, 4 and 9994 more "
                                            "(of 10000); record 0 has '?'")
    everyone = problem(_predict(client, model_id, [{}] * 10_000), 422)
    assert [e["message"] for e in everyone["errors"]] == [
        f"column '{c}' is missing in all 10000 records" for c in ("x", "colour", "flag")]
    assert len(resp.content) < 2_000 and len(json.dumps(everyone)) < 2_000
