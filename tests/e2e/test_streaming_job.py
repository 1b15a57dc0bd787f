"""A data set whose prepared matrix is many times the training memory budget: real API and worker processes train
the default ensemble and a single network by streaming its row groups, within the budget, resume after kill -9,
and predict like any job."""

import io

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import upload, wait_for_job
from tests.live import Stack, admin_headers, free_port

BUDGET = 24 << 20  # MLPS_TRAIN_MEMORY_BYTES
ROWS = 240_000
NUMERIC = [f"x{i}" for i in range(8)]
FAST = {"MLPS_LEASE_S": "2", "MLPS_REAP_EVERY_S": "0.5", "MLPS_TRAIN_MEMORY_BYTES": str(BUDGET),
        "MLPS_TORCH_THREADS": "1"}


def _parquet(rows: int = ROWS, seed: int = 0) -> bytes:
    """Tens of MB of Parquet: eight numbers (one with missing values), a colour, a site of 200 and a class that
    depends on them; encoded, several hundred MB."""
    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=rows) for name in NUMERIC}
    colour = rng.choice(["red", "green", "blue"], rows)
    site = np.char.add("site-", rng.integers(0, 200, rows).astype(str))
    signal = columns["x0"] - 0.7 * columns["x1"] + 0.5 * columns["x2"] ** 2 - 0.5 + (colour == "red") \
        + rng.normal(scale=0.3, size=rows)
    columns["x3"] = np.where(rng.random(rows) < 0.05, np.nan, columns["x3"])
    table = pa.table({**{k: pa.array(v, from_pandas=True) for k, v in columns.items()}, "colour": colour,
                      "site": site, "label": np.where(signal > 0, "pos", "neg")})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def data() -> bytes:
    return _parquet()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "var", env=FAST)
    s.run("migrate")
    s.port = free_port()
    s.start("api", "api", "--port", str(s.port))
    s.wait_ready(f"http://127.0.0.1:{s.port}")
    s.http = httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=60, headers=admin_headers(s.data_dir))
    yield s
    s.http.close()
    s.stop_all()


def _growth(job: dict) -> int:
    memory = job["result"]["memory"]
    assert memory["budget_bytes"] == BUDGET
    return memory["rss_peak_bytes"] - memory["rss_start_bytes"]


def _check_streamed(job: dict, rows: int, baseline: int | None = None) -> dict:
    """The job streamed its data and (given the peak RSS growth of a small in-memory job with the same model, which
    is what torch and the network themselves take) its data took no more than the budget."""
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    data = result["data"]
    assert data["streamed"] is True and data["row_groups"] >= 4 and data["budget_bytes"] == BUDGET
    assert data["estimated_bytes"] > 4 * BUDGET  # the prepared matrix would be several times the budget
    assert result["n_train"] + result["n_validation"] + result["n_test"] == rows
    growth = _growth(job)
    assert 0 < growth < data["estimated_bytes"]  # far less than holding the prepared matrix would take
    if baseline is not None:
        assert growth - baseline <= BUDGET, (growth, baseline)
    return result


ENSEMBLE = {"target": "label", "training": {"epochs": 2, "batch_size": 1024}}
MLP = {"target": "label", "model": {"type": "mlp", "hidden_layers": [32]}, "training": {"epochs": 2, "batch_size": 256}}


def test_a_job_larger_than_its_budget_streams_trains_and_predicts(stack, data):
    assert len(data) > 10 << 20
    stack.start("w", "worker", "--devices", "cpu")
    small = upload(stack.http, "small.parquet", _parquet(rows=3000, seed=1)).json()
    baselines = []
    for spec in (ENSEMBLE, MLP):
        job = stack.http.post("/jobs", json={"dataset_id": small["id"], **spec}).json()
        done = wait_for_job(stack.http, job["id"], timeout=300)
        assert done["status"] == "succeeded", done["error"]
        assert "data" not in done["result"]  # small data: in memory, as before
        baselines.append(_growth(done))
    ds = upload(stack.http, "big.parquet", data).json()
    assert ds["n_rows"] == ROWS
    ensemble = stack.http.post("/jobs", json={"dataset_id": ds["id"], **ENSEMBLE}).json()
    mlp = stack.http.post("/jobs", json={"dataset_id": ds["id"], **MLP}).json()
    done = wait_for_job(stack.http, ensemble["id"], timeout=600)
    result = _check_streamed(done, ROWS, baselines[0])
    assert result["ensemble"]["validation"] == "shared split"
    assert any("validation_fraction 0.2 lowered" in note for note in result["data"]["notes"])
    assert done["metrics"]["val_accuracy"] > 0.9
    single = wait_for_job(stack.http, mlp["id"], timeout=600)
    assert _check_streamed(single, ROWS, baselines[1])["data"]["validation_fraction"] <= 0.2
    assert single["metrics"]["val_accuracy"] > 0.9
    record = {**{name: 0.0 for name in NUMERIC}, "x0": 2.0, "colour": "red", "site": "site-7"}
    for job in (done, single):
        model = stack.http.get(f"/models/{job['model_id']}").json()
        assert [f["name"] for f in model["features"]] == [*NUMERIC, "colour", "site"]
        resp = stack.http.post("/predict", json={"model_id": job["model_id"],
                                                 "records": [record, {**record, "x0": -2.0, "colour": "blue"}]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == ["pos", "neg"]


def test_a_streamed_job_resumes_after_its_worker_is_killed(stack, data):
    stack.start("a", "worker", "--devices", "cpu")
    ds = upload(stack.http, "big.parquet", data).json()
    job = stack.http.post("/jobs", json={"dataset_id": ds["id"], "target": "label",
                                         "model": {"type": "mlp", "hidden_layers": [16]},
                                         "training": {"epochs": 5, "batch_size": 1024,
                                                      "early_stopping_patience": 0}}).json()
    wait_for_job(stack.http, job["id"], epoch=2, timeout=300)
    stack.kill("a")  # kill -9
    killed_at = stack.http.get(f"/jobs/{job['id']}").json()["progress"]["epoch"]
    stack.start("b", "worker", "--devices", "cpu")
    final = wait_for_job(stack.http, job["id"], timeout=600)
    result = _check_streamed(final, ROWS)
    assert final["attempts"] == 2 and result["resumed_from_epoch"] >= killed_at - 1 >= 1
    epochs = [e["epoch"] for e in stack.http.get(f"/jobs/{job['id']}/metrics").json()["epochs"]]
    assert epochs == list(range(1, 6))
