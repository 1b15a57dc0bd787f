"""/datasets on the in-process app: upload, list, show, preview, delete, and the errors of each."""

import hashlib

import pyarrow.parquet as pq

from tests.helpers import dataset_path, problem, upload


def test_upload_show_list_preview(client, settings):
    ds = upload(client, "iris.csv").json()
    assert ds["name"] == "iris.csv" and ds["format"] == "csv" and ds["n_rows"] == 150
    assert [c["name"] for c in ds["columns"]] == ["sepal_length", "sepal_width", "petal_length", "petal_width",
                                                  "species"]
    sent = dataset_path("iris.csv").read_bytes()
    assert ds["sha256"] == hashlib.sha256(sent).hexdigest() and ds["size_bytes"] == len(sent)
    assert client.get(f"/datasets/{ds['id']}").json() == ds
    listing = client.get("/datasets").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == ds["id"]
    preview = client.get(f"/datasets/{ds['id']}/preview", params={"limit": 3}).json()
    assert len(preview["rows"]) == 3 and preview["rows"][0]["species"] == "Iris-setosa"
    stored = pq.read_table(settings.data_dir / "datasets" / f"{ds['id']}.parquet")
    assert stored.num_rows == 150 and stored.column_names == [c["name"] for c in ds["columns"]]


def test_upload_without_multipart_or_without_file(client):
    body = problem(client.post("/datasets", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"}), 415)
    assert "multipart/form-data" in body["detail"]
    body = problem(client.post("/datasets", data={"name": "x"}, files={"other": ("x.csv", b"a\n1\n")}), 422)
    assert "part named 'file'" in body["detail"]


def test_upload_over_the_size_limit_is_413(client, settings):
    settings.max_upload_bytes = 100
    body = problem(upload(client, "iris.csv", status=None), 413)
    assert "100 bytes" in body["detail"]
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_unknown_dataset_is_404(client):
    body = problem(client.get("/datasets/ds_0000000000000000"), 404)
    assert "ds_0000000000000000" in body["detail"]
    problem(client.get("/datasets/../../etc/passwd"), 404)


def test_delete_is_refused_while_a_job_needs_it(client, settings):
    ds = upload(client, "iris.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species"}).json()
    body = problem(client.delete(f"/datasets/{ds['id']}"), 409)
    assert job["id"] in body["detail"]
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    problem(client.get(f"/datasets/{ds['id']}"), 404)
    assert not (settings.data_dir / "datasets" / f"{ds['id']}.parquet").exists()
    assert client.get(f"/jobs/{job['id']}").json()["dataset_id"] is None  # the job's history survives


def test_a_european_csv_with_decimal_commas_reads_as_numbers(client):
    rows = ["temperatur;gewicht;stadt;klasse"] + [f"{20 + i % 7},{i % 10};{60 + i},5;{'Köln' if i % 2 else 'Graz'};"
                                                  f"{'hoch' if i % 3 else 'tief'}" for i in range(40)]
    resp = upload(client, "werte.csv", ("\n".join(rows) + "\n").encode())
    columns = {c["name"]: c for c in resp.json()["columns"]}
    assert columns["temperatur"]["kind"] == "numeric" and columns["gewicht"]["kind"] == "numeric"
    assert columns["temperatur"]["stats"]["min"] == 20.0 and columns["gewicht"]["stats"]["max"] == 99.5
    assert columns["stadt"]["kind"] == "categorical"
    # a ';' file with dots keeps its dots, and a ',' file never reads commas as decimals
    assert upload(client, "dots.csv", b"a;b\n1.5;x\n2.25;y\n").json()["columns"][0]["stats"]["max"] == 2.25
    assert upload(client, "plain.csv", b"a,b\n1,2\n3,4\n").json()["columns"][1]["kind"] == "numeric"
