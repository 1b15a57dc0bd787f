"""Models as managed resources: delete, files gone from under the server, and the streamed download."""

import io
import shutil
import zipfile

import pytest
from safetensors.numpy import load as load_safetensors

from service.server.predict import REVALIDATE_S
from tests.helpers import problem, upload, wait_for

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def model_id(client, worker) -> str:
    ds = upload(client, "iris.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"},
                                     "training": {"epochs": 5}}).json()
    assert worker.run_once() == job["id"]
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    return job["model_id"]


def _predict(client, model_id):
    return client.post("/predict", json={"model_id": model_id, "records": [IRIS]})


def test_delete_removes_row_files_and_cache_and_then_404(client, model_id, migrated):
    assert _predict(client, model_id).status_code == 200  # cached now
    folder = migrated.data_dir / "models" / model_id
    assert folder.is_dir()
    resp = client.delete(f"/models/{model_id}")
    assert resp.status_code == 204 and resp.content == b""
    assert not folder.exists()
    problem(_predict(client, model_id), 404, field="model_id")
    problem(client.get(f"/models/{model_id}"), 404)
    problem(client.delete(f"/models/{model_id}"), 404)
    assert model_id not in [m["id"] for m in client.get("/models").json()["items"]]


def test_files_removed_by_hand_answer_410_also_for_a_cached_copy(client, model_id, migrated):
    assert _predict(client, model_id).status_code == 200
    shutil.rmtree(migrated.data_dir / "models" / model_id)
    # the cached copy is trusted for at most REVALIDATE_S, then the missing folder is noticed
    gone = wait_for(lambda: (r := _predict(client, model_id)).status_code != 200 and r, timeout=10 * REVALIDATE_S,
                    interval=0.05, what="the cache to notice the missing folder")
    body = problem(gone, 410, "no files on the server", field="model_id")
    assert model_id in body["detail"]
    problem(client.get(f"/models/{model_id}"), 410)
    problem(client.get(f"/models/{model_id}/download"), 410)
    scored = client.post(f"/models/{model_id}/predict", files={"file": ("x.csv", b"sepal_length\n1\n", "text/csv")})
    problem(scored, 410)
    # the record can still be deleted, after which the model is simply unknown
    assert client.delete(f"/models/{model_id}").status_code == 204
    problem(_predict(client, model_id), 404)


def test_download_streams_a_zip_of_the_model_and_leaves_no_file(client, model_id, migrated):
    before = set((migrated.data_dir / "tmp").iterdir())
    resp = client.get(f"/models/{model_id}/download")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
    assert f'filename="{model_id}.zip"' in resp.headers["content-disposition"]
    folder = migrated.data_dir / "models" / model_id
    with zipfile.ZipFile(io.BytesIO(resp.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["model.json", "weights.safetensors"]
        assert archive.read("model.json") == (folder / "model.json").read_bytes()
        weights = archive.read("weights.safetensors")
    assert weights == (folder / "weights.safetensors").read_bytes()
    assert load_safetensors(weights)  # a real safetensors file, tensors and all
    assert set((migrated.data_dir / "tmp").iterdir()) == before


def test_another_owner_cannot_delete(client, model_id, migrated):
    from tests.helpers import bearer, make_key

    other = bearer(make_key(migrated, "someone-else"))
    problem(client.delete(f"/models/{model_id}", headers=other), 404)
    assert _predict(client, model_id).status_code == 200
