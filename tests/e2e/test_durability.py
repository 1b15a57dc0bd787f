"""No job lost, none run twice: real API and worker processes on SQLite and on PostgreSQL."""

import httpx
import pytest

from tests.helpers import upload, wait_for_job
from tests.live import Stack, admin_headers, free_port

BOTH_DATABASES = True
# Short leases so that a lost worker's job is reclaimed within seconds.
FAST = {"MLPS_LEASE_S": "2", "MLPS_REAP_EVERY_S": "0.5", "MLPS_CANCEL_GRACE_S": "2"}


@pytest.fixture
def stack(tmp_path, database):
    s = Stack(tmp_path / "var", database_url=database, env=FAST)
    s.run("migrate")
    s.port = free_port()
    s.start("api", "api", "--port", str(s.port))
    s.wait_ready(f"http://127.0.0.1:{s.port}")
    s.http = httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=30, headers=admin_headers(s.data_dir))
    yield s
    s.http.close()
    s.stop_all()


def job(http, job_id):
    return http.get(f"/jobs/{job_id}").json()


def epochs_recorded(http, job_id):
    return [e["epoch"] for e in http.get(f"/jobs/{job_id}/metrics").json()["epochs"]]


LONG = {"target": "diagnosis", "model": {"type": "mlp"},
        "training": {"epochs": 120, "batch_size": 8, "early_stopping_patience": 0}}


def test_three_workers_sixty_jobs_each_run_exactly_once(stack):
    for i in range(3):
        stack.start(f"w{i}", "worker", "--devices", "cpu")
    ds = upload(stack.http, "iris.csv").json()
    ids = [stack.http.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                          "training": {"epochs": 2, "seed": i}}).json()["id"] for i in range(60)]
    done = [wait_for_job(stack.http, i, timeout=180) for i in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 60
    assert all(j["attempts"] == 1 for j in done)
    assert all(epochs_recorded(stack.http, i) == [1, 2] for i in ids)
    models = stack.http.get("/models", params={"limit": 500}).json()
    assert sorted(m["job_id"] for m in models["items"]) == sorted(ids)
    workers = {j["id"]: j for j in stack.http.get("/workers").json()["items"]}
    assert len(workers) == 3 and all(w["alive"] for w in workers.values())


def test_killed_worker_job_resumes_from_its_checkpoint(stack):
    stack.start("a", "worker", "--devices", "cpu")
    ds = upload(stack.http, "breast_cancer.csv").json()
    job_id = stack.http.post("/jobs", json={"dataset_id": ds["id"], **LONG}).json()["id"]
    wait_for_job(stack.http, job_id, epoch=15)
    stack.kill("a")  # kill -9: no goodbye, its training process dies with it
    killed_at = job(stack.http, job_id)["progress"]["epoch"]
    stack.start("b", "worker", "--devices", "cpu")
    final = wait_for_job(stack.http, job_id, timeout=180)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 2
    assert final["result"]["resumed_from_epoch"] >= killed_at - 1 >= 14  # not from epoch 0
    assert epochs_recorded(stack.http, job_id) == list(range(1, 121))  # one row per epoch, none repeated


def test_killed_worker_resumes_an_ensemble_mid_training(stack):
    stack.start("a", "worker", "--devices", "cpu")
    ds = upload(stack.http, "breast_cancer.csv").json()
    spec = {"dataset_id": ds["id"], "target": "diagnosis", "model": {"members": 8},
            "training": {"epochs": 60, "batch_size": 16, "early_stopping_patience": 60}}
    job_id = stack.http.post("/jobs", json=spec).json()["id"]
    wait_for_job(stack.http, job_id, epoch=8)
    stack.kill("a")
    killed_at = job(stack.http, job_id)["progress"]["epoch"]
    stack.start("b", "worker", "--devices", "cpu")
    final = wait_for_job(stack.http, job_id, timeout=180)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 2 and final["result"]["resumed_from_epoch"] >= killed_at - 1 >= 7
    assert epochs_recorded(stack.http, job_id) == list(range(1, 61))
    assert final["result"]["ensemble"]["members_trained"] == 8 and final["metrics"]["val_accuracy"] > 0.9


def test_sigterm_hands_running_jobs_back_and_exits(stack):
    stack.start("a", "worker", "--devices", "cpu")
    ds = upload(stack.http, "breast_cancer.csv").json()
    job_id = stack.http.post("/jobs", json={"dataset_id": ds["id"], **LONG}).json()["id"]
    wait_for_job(stack.http, job_id, epoch=10)
    assert stack.stop("a", timeout=20) == 0
    back = job(stack.http, job_id)
    assert back["status"] == "queued" and back["attempts"] == 0  # handed back without counting the attempt
    stack.start("b", "worker", "--devices", "cpu")
    final = wait_for_job(stack.http, job_id, timeout=180)
    assert final["status"] == "succeeded" and final["attempts"] == 1
    assert final["result"]["resumed_from_epoch"] >= 9
    assert epochs_recorded(stack.http, job_id) == list(range(1, 121))


def test_time_limit_fails_the_job_without_retry(stack):
    stack.start("a", "worker", "--devices", "cpu")
    ds = upload(stack.http, "breast_cancer.csv").json()
    spec = {"dataset_id": ds["id"], **LONG, "max_runtime_s": 1}
    spec["training"] = {**LONG["training"], "epochs": 100000}
    job_id = stack.http.post("/jobs", json=spec).json()["id"]
    final = wait_for_job(stack.http, job_id, timeout=60)
    assert final["status"] == "failed" and final["attempts"] == 1
    assert "exceeded its time limit (max_runtime_s=1)" in final["error"]


def test_api_restart_loses_nothing(stack):
    stack.start("w", "worker", "--devices", "cpu")
    ds = upload(stack.http, "iris.csv").json()
    ids = [stack.http.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                          "model": {"type": "mlp"},
                                          "training": {"epochs": 40, "early_stopping_patience": 0}}).json()["id"]
           for _ in range(4)]
    wait_for_job(stack.http, ids[0], {"running"})
    stack.stop("api")
    stack.start("api", "api", "--port", str(stack.port))
    stack.wait_ready(f"http://127.0.0.1:{stack.port}")
    done = [wait_for_job(stack.http, i, timeout=180) for i in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 4
    assert all(epochs_recorded(stack.http, i) == list(range(1, 41)) for i in ids)
