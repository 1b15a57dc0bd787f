"""Column kinds and warnings through the API: what an upload infers and says, PATCH /datasets/{id}, a job's
column_kinds, the columns a job leaves out, the checks at submit, and a date column trained and predicted."""

import csv
import io

from tests.helpers import bearer, make_key, problem, upload


def csv_bytes(header: list[str], rows: list[list[object]], delimiter: str = ",") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def people(n: int = 60) -> bytes:
    """An ID column, a free-text column, a constant, a date, and a class that follows x."""
    rows = [[1000 + i, f"Comment number {i} says something long here", "same",
             f"2021-{1 + i % 12:02d}-{1 + i % 28:02d}", i % 10, "big" if i % 10 >= 5 else "small"] for i in range(n)]
    return csv_bytes(["customer_id", "comment", "constant", "joined", "x", "size"], rows)


def codes(warnings: list[dict]) -> list[tuple[str, str | None]]:
    return [(w["code"], w["column"]) for w in warnings]


def test_an_upload_says_what_it_inferred_and_why(client):
    ds = upload(client, "people.csv", people()).json()
    kinds = {c["name"]: (c["kind"], c["reason"]) for c in ds["columns"]}
    assert kinds["customer_id"] == ("identifier", "identifier: 60 distinct integers in 60 rows, and its name says so")
    assert kinds["comment"][0] == "text" and kinds["joined"] == ("datetime", "datetime: every value reads as "
                                                                             "YYYY-MM-DD")
    assert kinds["x"] == ("numeric", "numeric: integers") and kinds["size"][0] == "categorical"
    assert codes(ds["warnings"]) == [("identifier_column", "customer_id"), ("text_column", "comment"),
                                     ("constant_column", "constant")]
    assert ds["dialect"]["delimiter"] == "," and ds["dialect"]["encoding"] == "utf-8"
    assert client.get(f"/datasets/{ds['id']}").json() == ds


def test_a_european_latin1_file_through_the_api(client):
    rows = [[f"{1 + i % 28:02d}.{1 + i % 12:02d}.2020", f"{1000 + i * 37:,}".replace(",", ".") + ",5",
             "Köln" if i % 2 else "Zürich"] for i in range(30)]
    body = csv_bytes(["Datum", "Betrag", "Ort"], rows, delimiter=";").decode().encode("cp1252")
    ds = upload(client, "eu.csv", body).json()
    kinds = {c["name"]: c["kind"] for c in ds["columns"]}
    assert kinds == {"Datum": "datetime", "Betrag": "numeric", "Ort": "categorical"}
    assert ds["dialect"] | {"missing_values": None} == {
        "format": "csv", "delimiter": ";", "decimal": ",", "encoding": "cp1252", "quoted_newlines": False,
        "thousands_separator": ["."], "missing_values": None}
    assert codes(ds["warnings"]) == [("not_utf8", None)]
    preview = client.get(f"/datasets/{ds['id']}/preview", params={"limit": 2}).json()["rows"]
    assert preview[0] == {"Datum": "01.01.2020", "Betrag": 1000.5, "Ort": "Zürich"}


def test_patch_sets_kinds_and_renames(client):
    ds = upload(client, "people.csv", people()).json()
    changed = client.patch(f"/datasets/{ds['id']}", json={"name": "customers",
                                                           "column_kinds": {"customer_id": "categorical",
                                                                            "x": "categorical"}})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    col = {c["name"]: c for c in body["columns"]}
    assert body["name"] == "customers"
    assert col["customer_id"]["kind"] == "categorical" and col["customer_id"]["inferred_kind"] == "identifier"
    assert col["x"]["reason"] == "categorical: set by the user (inferred: numeric)"
    assert ("identifier_column", "customer_id") not in codes(body["warnings"])  # warnings follow the kinds
    assert client.get(f"/datasets/{ds['id']}").json() == body
    back = client.patch(f"/datasets/{ds['id']}", json={"column_kinds": {"customer_id": "identifier"}}).json()
    assert {c["name"]: c for c in back["columns"]}["customer_id"].get("inferred_kind") is None


def test_bad_kind_changes_are_422_naming_the_column(client, migrated):
    ds = upload(client, "people.csv", people()).json()
    url = f"/datasets/{ds['id']}"
    problem(client.patch(url, json={"column_kinds": {"size": "numeric"}}), 422, "holds text, not numbers",
            field="column_kinds.size", column="size")
    problem(client.patch(url, json={"column_kinds": {"comment": "datetime"}}), 422, "not dates such as",
            field="column_kinds.comment", column="comment")
    problem(client.patch(url, json={"column_kinds": {"nope": "numeric"}}), 422, "available columns",
            field="column_kinds.nope", column="nope")
    problem(client.patch(url, json={"column_kinds": {"x": "tensor"}}), 422, field="column_kinds.x")
    problem(client.patch(url, json={"kinds": {}}), 422, field="kinds")
    assert client.get(url).json() == ds  # nothing half-stored
    other = bearer(make_key(migrated, "other"))
    problem(client.patch(url, json={"name": "mine"}, headers=other), 404)
    problem(client.patch("/datasets/ds_0000000000000000", json={"name": "x"}), 404)


def test_a_job_leaves_identifiers_text_and_constants_out_and_says_so(client):
    ds = upload(client, "people.csv", people()).json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "size"}).json()
    assert job["spec"]["features"] == ["joined", "x"]
    assert job["spec"]["column_kinds"] == {"joined": "datetime", "x": "numeric"}
    assert job["spec"]["date_layouts"] == {"joined": "iso"}
    assert codes(job["warnings"]) == [("column_left_out", "customer_id"), ("column_left_out", "comment"),
                                      ("column_left_out", "constant")]
    assert client.get(f"/jobs/{job['id']}").json()["warnings"] == job["warnings"]
    listed = client.post("/jobs", json={"dataset_id": ds["id"], "target": "size",
                                        "features": ["customer_id", "x", "constant"]}).json()
    assert listed["spec"]["features"] == ["customer_id", "x"]  # listed: kept; constant: still left out
    assert codes(listed["warnings"]) == [("column_left_out", "constant")]
    own = client.post("/jobs", json={"dataset_id": ds["id"], "target": "size",
                                     "column_kinds": {"customer_id": "numeric", "joined": "categorical"}}).json()
    assert own["spec"]["column_kinds"] == {"customer_id": "numeric", "joined": "categorical", "x": "numeric"}
    problem(client.post("/jobs", json={"dataset_id": ds["id"], "target": "size",
                                       "column_kinds": {"comment": "numeric"}}), 422, "holds text",
            field="column_kinds.comment", column="comment")


def test_checks_at_submit(client):
    rows = [[i % 7, "a" if i % 7 < 3 else "b", "A" if i % 7 < 3 else "B", i * 0.5] for i in range(70)]
    rows += [[99, "c", "C", 1.0], [5, None, "B", 2.0]]
    ds = upload(client, "checks.csv", csv_bytes(["x", "y", "y_copy", "z"], rows)).json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "y"}).json()
    found = codes(job["warnings"])
    assert ("missing_target", "y") in found and ("rare_class", "y") in found and ("target_leak", "y_copy") in found
    rare = next(w for w in job["warnings"] if w["code"] == "rare_class")
    assert rare["message"].startswith("class 'c' of 'y' has 1 row(s)")
    regression = client.post("/jobs", json={"dataset_id": ds["id"], "target": "x", "task": "regression",
                                            "features": ["z"]}).json()
    assert ("target_looks_categorical", "x") in codes(regression["warnings"])
    ids = upload(client, "ids.csv", csv_bytes(["name", "v"], [[f"n{i}", i % 3] for i in range(30)])).json()
    problem(client.post("/jobs", json={"dataset_id": ids["id"], "target": "name"}), 422,
            "every row is its own class", field="target", column="name")
    people_ds = upload(client, "people.csv", people()).json()
    problem(client.post("/jobs", json={"dataset_id": people_ds["id"], "target": "joined"}), 422,
            "is a datetime column", field="target", column="joined")
    problem(client.post("/jobs", json={"dataset_id": people_ds["id"], "target": "size",
                                       "features": ["constant"]}), 422, "no column is left", field="features")


def test_macrodata_trains_with_its_date_expanded_and_predicts_dates(client, worker):
    ds = upload(client, "macrodata.csv").json()
    assert {c["name"]: c["kind"] for c in ds["columns"]}["date"] == "datetime"
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "realgdp",
                                     "model": {"type": "mlp", "hidden_layers": [16]},
                                     "training": {"epochs": 5}}).json()
    assert job["spec"]["column_kinds"]["date"] == "datetime"
    assert worker.run_once() == job["id"]
    done = client.get(f"/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model = client.get(f"/models/{done['model_id']}").json()
    date = next(f for f in model["features"] if f["name"] == "date")
    assert date == {"name": "date", "kind": "datetime", "layout": "iso"}
    record = {c["name"]: 1.0 for c in ds["columns"] if c["name"] not in ("date", "realgdp")}
    answer = client.post("/predict", json={"model_id": done["model_id"],
                                           "records": [{**record, "date": "2009-07-01"}]})
    assert answer.status_code == 200, answer.text
    later = client.post("/predict", json={"model_id": done["model_id"],
                                          "records": [{**record, "date": "2030-01-01"}]}).json()
    assert later["predictions"][0] != answer.json()["predictions"][0]  # the date reaches the network
    problem(client.post("/predict", json={"model_id": done["model_id"],
                                          "records": [{**record, "date": "2009-07-01"},
                                                      {**record, "date": "July 2009"}]}), 422,
            "record 1: column 'date' expects a date like '2012-01-31' (YYYY-MM-DD), got 'July 2009'",
            column="date")
    # the Open Inference Protocol takes dates as BYTES; ONNX has no operator that reads them
    names = [f["name"] for f in model["features"]]
    inputs = [{"name": n, "shape": [1], "datatype": "BYTES" if n == "date" else "FP64",
               "data": ["2009-07-01" if n == "date" else 1.0]} for n in names]
    meta = client.get(f"/v2/models/{done['model_id']}").json()
    assert {t["name"]: t["datatype"] for t in meta["inputs"]}["date"] == "BYTES"
    infer = client.post(f"/v2/models/{done['model_id']}/infer", json={"inputs": inputs})
    assert infer.status_code == 200, infer.text
    assert infer.json()["outputs"][0]["data"][0] == answer.json()["predictions"][0]
    bad = [dict(t, data=["July 2009"]) if t["name"] == "date" else t for t in inputs]
    refused = client.post(f"/v2/models/{done['model_id']}/infer", json={"inputs": bad})
    assert refused.status_code == 400 and "input 'date': element 0 ('July 2009') is not a date" in \
        refused.json()["error"]
    problem(client.get(f"/models/{done['model_id']}/export", params={"format": "onnx"}), 422,
            "date feature(s) 'date'")
