"""Hosts that share nothing but PostgreSQL and an S3 bucket: one `mlps api` and two `mlps worker` processes, each
with its own local data dir; a worker killed mid-job, the other resuming from the checkpoint in the bucket, and a
prediction from a third process with an empty data dir."""

import uuid

import httpx
import pytest

from tests.helpers import upload, wait_for, wait_for_job
from tests.live import IRIS_RECORDS, Stack, admin_headers, free_port, s3_location

# Short leases so that the killed worker's job is reclaimed within seconds; a checkpoint after every epoch.
FAST = {"MLPS_LEASE_S": "2", "MLPS_REAP_EVERY_S": "0.5", "MLPS_CANCEL_GRACE_S": "2", "MLPS_PROGRESS_FLUSH_S": "0"}
LONG = {"target": "species", "model": {"type": "mlp", "hidden_layers": [32]},
        "training": {"epochs": 150, "batch_size": 4, "early_stopping_patience": 0}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> tuple[str, dict[str, str]]:
    return s3_location(tmp_path_factory)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_api_and_two_workers_share_only_postgres_and_the_bucket(tmp_path, database, s3):
    url, s3_env = s3
    storage_url = f"{url}/e2e-{uuid.uuid4().hex[:12]}"
    env = {**FAST, **s3_env, "MLPS_STORAGE_URL": storage_url}
    hosts = {name: Stack(tmp_path / name / "var", database_url=database, env=env)
             for name in ("api", "worker_a", "worker_b", "predictor")}
    for stack in hosts.values():
        stack.data_dir.mkdir(parents=True)
    api = hosts["api"]
    api.run("migrate")
    port = free_port()
    api.start("api", "api", "--port", str(port))
    api.wait_ready(f"http://127.0.0.1:{port}")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=admin_headers(api.data_dir))
    try:
        hosts["worker_a"].start("worker", "worker", "--devices", "cpu")
        ds = upload(http, "iris.csv").json()
        job_id = http.post("/jobs", json={"dataset_id": ds["id"], **LONG}).json()["id"]
        wait_for_job(http, job_id, epoch=5, timeout=180)

        import boto3  # the test looks into the bucket itself: a checkpoint must be there before the kill

        bucket, _, prefix = storage_url[len("s3://"):].partition("/")
        client = boto3.client("s3", endpoint_url=s3_env.get("AWS_ENDPOINT_URL"),
                              aws_access_key_id=s3_env.get("AWS_ACCESS_KEY_ID"),
                              aws_secret_access_key=s3_env.get("AWS_SECRET_ACCESS_KEY"), region_name="us-east-1")

        def checkpoint_in_bucket() -> bool:
            listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/checkpoints/{job_id}/")
            return any(o["Key"].endswith(".json") for o in listed.get("Contents", []))

        wait_for(checkpoint_in_bucket, timeout=60, what="a checkpoint in the bucket")
        hosts["worker_a"].kill("worker")  # kill -9: its training process dies with it
        killed_at = http.get(f"/jobs/{job_id}").json()["progress"]["epoch"]
        assert killed_at < LONG["training"]["epochs"], "the job ended before the kill; make it longer"
        hosts["worker_b"].start("worker", "worker", "--devices", "cpu")
        final = wait_for_job(http, job_id, timeout=300)
        assert final["status"] == "succeeded", final["error"]
        assert final["attempts"] == 2
        assert final["result"]["resumed_from_epoch"] > 0  # from the checkpoint in the bucket, not from epoch 0
        # the hosts share no disk: worker B never saw worker A's files, the API holds no model or checkpoint
        b_dir = hosts["worker_b"].data_dir
        assert not (b_dir / "admin.key").exists() and not any((b_dir / "models").iterdir())
        assert not (api.data_dir / "checkpoints" / job_id).exists()
        assert not (api.data_dir / "models" / final["model_id"]).exists()

        predictor = hosts["predictor"]
        other_port = free_port()
        predictor.start("api", "api", "--port", str(other_port))
        predictor.wait_ready(f"http://127.0.0.1:{other_port}")
        with httpx.Client(base_url=f"http://127.0.0.1:{other_port}", timeout=30,
                          headers=admin_headers(api.data_dir)) as third:
            resp = third.post("/predict", json={"model_id": final["model_id"], "records": IRIS_RECORDS})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == ["Iris-setosa", "Iris-virginica"]
        assert (predictor.data_dir / "models" / final["model_id"] / "model.json").is_file()  # fetched, cached
    finally:
        http.close()
        for stack in hosts.values():
            stack.stop_all()
