"""The service under real faults, with real `mlps serve` processes: a full disk, a read-only database, a dead
worker, a model folder removed under a live server, a kill during an upload, hostile uploads. Each test checks the
status codes during the fault, that work submitted during it runs once it clears, and that nothing stored earlier
was harmed."""

import io
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import dataset_path, problem, upload, wait_for, wait_for_job
from tests.live import free_port, running

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
QUICK = {"model": {"type": "mlp"}, "training": {"epochs": 3}}


def _train(http: httpx.Client, dataset_id: str) -> dict:
    job = http.post("/jobs", json={"dataset_id": dataset_id, "target": "species", **QUICK})
    assert job.status_code == 202, job.text
    return wait_for_job(http, job.json()["id"], {"succeeded"})


def _upload(http: httpx.Client, data: bytes, name: str = "iris.csv") -> httpx.Response:
    return upload(http, name, data, status=None)


def _temp_files(data_dir: Path) -> list[Path]:
    tmp = data_dir / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


@contextmanager
def _tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); run as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    """Write a file until the filesystem is full (to its last byte); the file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            with suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_answers_507_then_heals_and_harms_nothing(tmp_path):
    with _tmpfs(tmp_path / "disk", 160) as disk:
        data_dir = disk / "var"
        port = free_port()
        with running(["serve", "--port", str(port), "--devices", "cpu"], data_dir=data_dir, port=port,
                     env={"MLPS_MIN_FREE_BYTES": str(1 << 20)}) as http:
            iris = dataset_path("iris.csv").read_bytes()
            ds = _upload(http, iris).json()
            before = _train(http, ds["id"])
            answer = http.post("/predict", json={"model_id": before["model_id"], "records": [IRIS]}).json()

            filler = _fill(disk)
            problem(_upload(http, iris * 200), 507, "storage is full")
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "MB free" in ready.json()["detail"]
            # what was stored before still answers, the same as before
            assert http.post("/predict", json={"model_id": before["model_id"], "records": [IRIS]}).json() == answer
            assert http.get(f"/datasets/{ds['id']}").status_code == 200
            during = http.post("/jobs", json={"dataset_id": ds["id"], "target": "species", **QUICK})
            assert during.status_code in (202, 507), during.text
            if during.status_code == 202:  # the row fitted in; the worker claims nothing while the disk is full
                assert http.get(f"/jobs/{during.json()['id']}").json()["status"] == "queued"
            else:
                problem(during, 507)

            filler.unlink()
            wait_for(lambda: http.get("/readyz").status_code == 200, timeout=30, what="/readyz after the fault")
            assert _upload(http, iris).status_code == 201
            if during.status_code == 202:
                wait_for_job(http, during.json()["id"], {"succeeded"})
            assert _train(http, ds["id"])["status"] == "succeeded"
            assert http.post("/predict", json={"model_id": before["model_id"], "records": [IRIS]}).json() == answer
            assert _temp_files(data_dir) == []


def _chattr(flag: str, *paths: Path) -> bool:
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    return done.returncode == 0


def test_a_read_only_database_answers_503_then_heals(tmp_path):
    data_dir = tmp_path / "var"
    port = free_port()
    with running(["serve", "--port", str(port), "--devices", "cpu"], data_dir=data_dir, port=port) as http:
        iris = dataset_path("iris.csv").read_bytes()
        ds = _upload(http, iris).json()
        db_files = [p for p in data_dir.glob("mlps.db*") if p.is_file() and not p.name.endswith("-shm")]
        if not shutil.which("chattr") or not _chattr("+i", *db_files):
            pytest.skip("chattr +i is not available here (needs root on a filesystem with attributes)")
        try:
            datasets_before = sorted((data_dir / "datasets").iterdir())
            problem(_upload(http, iris), 503, "database is unavailable")
            assert http.post("/jobs", json={"dataset_id": ds["id"], "target": "species"}).status_code == 503
            assert http.get(f"/datasets/{ds['id']}").status_code == 200  # reads still work
            # the rejected upload left no file behind
            assert sorted((data_dir / "datasets").iterdir()) == datasets_before
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "not writable" in ready.json()["detail"]
        finally:
            _chattr("-i", *db_files)
        wait_for(lambda: http.get("/readyz").status_code == 200, timeout=60, what="/readyz after the fault")
        # the worker outlived the fault: a job submitted now runs
        assert _train(http, ds["id"])["status"] == "succeeded"
        assert _temp_files(data_dir) == []


def _serve_pid(port: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"service.cli serve --port {port}"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def _worker_pids(serve_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(serve_pid), "-f", "service.cli worker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_serve_restarts_a_worker_that_died(tmp_path):
    data_dir = tmp_path / "var"
    port = free_port()
    with running(["serve", "--port", str(port), "--devices", "cpu"], data_dir=data_dir, port=port) as http:
        serve_pid = _serve_pid(port)
        first = wait_for(lambda: _worker_pids(serve_pid), timeout=30, what="the embedded worker")
        os.kill(first[0], signal.SIGKILL)
        second = wait_for(lambda: [p for p in _worker_pids(serve_pid) if p not in first], timeout=60,
                          what="a new embedded worker")
        assert second
        ds = _upload(http, dataset_path("iris.csv").read_bytes()).json()
        assert _train(http, ds["id"])["status"] == "succeeded"


def test_a_model_folder_removed_under_a_live_server_is_410_not_500(server):
    ds = _upload(server, dataset_path("iris.csv").read_bytes()).json()
    job = _train(server, ds["id"])
    model_id = job["model_id"]
    assert server.post("/predict", json={"model_id": model_id, "records": [IRIS]}).status_code == 200
    shutil.rmtree(server.data_dir / "models" / model_id)
    gone = wait_for(lambda: (r := server.post("/predict", json={"model_id": model_id, "records": [IRIS]}))
                    .status_code != 200 and r, timeout=10, what="the server to notice")
    problem(gone, 410, "no files on the server")
    problem(server.get(f"/models/{model_id}/download"), 410)
    assert server.delete(f"/models/{model_id}").status_code == 204
    problem(server.post("/predict", json={"model_id": model_id, "records": [IRIS]}), 404)
    assert server.get("/healthz").status_code == 200


def test_kill_during_an_upload_leaves_no_temp_file_after_restart(tmp_path):
    data_dir = tmp_path / "var"
    port = free_port()
    env = {"MLPS_TEMP_MAX_AGE_S": "1"}
    received = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
               b"Content-Type: text/csv\r\n\r\na,b\r\n")
        for _ in range(200):
            yield b"1,2\n" * 20_000
            received.set()
            threading.Event().wait(0.05)

    with running(["serve", "--port", str(port), "--devices", "cpu"], data_dir=data_dir, port=port, env=env) as http:
        sender = threading.Thread(target=lambda: _ignore_errors(lambda: http.post(
            "/datasets", content=slow_body(), headers={"content-type": "multipart/form-data; boundary=b"})))
        sender.start()
        wait_for(lambda: _temp_files(data_dir) and _temp_files(data_dir)[0].stat().st_size > 1 << 20,
                 timeout=60, what="the upload to reach the server's disk")
        serve_pid = _serve_pid(port)
        for pid in [serve_pid, *_worker_pids(serve_pid)]:  # the whole `mlps serve`, as a power cut would
            os.kill(pid, signal.SIGKILL)
        sender.join(timeout=60)
    assert _temp_files(data_dir), "the killed upload should have left its temporary file"
    port = free_port()
    with running(["serve", "--port", str(port), "--devices", "cpu"], data_dir=data_dir, port=port, env=env) as http:
        wait_for(lambda: _temp_files(data_dir) == [], timeout=30, what="the startup sweep")
        assert _upload(http, dataset_path("iris.csv").read_bytes()).status_code == 201


def _ignore_errors(call) -> None:
    with suppress(httpx.HTTPError):
        call()


def test_wide_and_bomb_uploads_are_answered_and_the_service_still_serves(server):
    columns = 4_999
    wide = (",".join(f"c{i}" for i in range(columns)) + "\n" + ",".join(str(i % 7) for i in range(columns))
            + "\n").encode()
    resp = server.post("/datasets", files={"file": ("wide.csv", wide, "text/csv")}, timeout=60)
    assert resp.status_code == 201, resp.text
    assert resp.json()["n_columns"] == columns and resp.json()["n_rows"] == 1

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("X.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (50_000, 1000)})
        zeros = b"\0" * (1 << 20)
        for _ in range(400):
            member.write(zeros)
    bomb = server.post("/datasets", files={"file": ("bomb.npz", buf.getvalue(), "application/octet-stream")},
                       timeout=60)
    problem(bomb, 422, "decompression bomb", column="X")
    assert server.get("/healthz").status_code == 200
    assert _upload(server, dataset_path("iris.csv").read_bytes()).status_code == 201



def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class _Postgres:
    """A private PostgreSQL server that the test stops and starts (Debian's binaries, as scripts/with-postgres)."""

    def __init__(self, root: Path, port: int) -> None:
        self.bin, self.root, self.port = _pg_bin(), root, port
        self.data = root / "db"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        root.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(root, "postgres")
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _pg(self, tool: str, *args: str) -> None:
        assert self.bin is not None
        subprocess.run([*self.as_postgres, str(self.bin / tool), *args], check=True, capture_output=True)

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o",
                 f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


def test_postgresql_restart_mid_job_is_503_then_the_job_resumes(tmp_path):
    if _pg_bin() is None or (os.getuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("PostgreSQL's server binaries are not installed (scripts/with-postgres installs them)")
    # outside pytest's tmp_path: the postgres user cannot enter root's 0700 folders
    pg_root = Path(tempfile.mkdtemp(prefix="mlps-pg."))
    pg = _Postgres(pg_root, free_port())
    pg.start()
    data_dir = tmp_path / "var"
    port = free_port()
    try:
        with running(["serve", "--port", str(port), "--devices", "cpu"], data_dir=data_dir, port=port,
                     database_url=pg.url, env={"MLPS_PROGRESS_FLUSH_S": "0"}) as http:
            ds = _upload(http, dataset_path("iris.csv").read_bytes()).json()
            job = http.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"},
                                           "training": {"epochs": 4000, "early_stopping_patience": None,
                                                        "batch_size": 16}}).json()
            wait_for_job(http, job["id"], epoch=20, timeout=120)
            pg.stop()
            down = http.get(f"/jobs/{job['id']}")
            problem(down, 503, "database is unavailable")
            assert http.get("/readyz").status_code == 503
            pg.start()
            done = wait_for_job(http, job["id"], timeout=600)
            assert done["status"] == "succeeded", done["error"]
            epochs = [e["epoch"] for e in http.get(f"/jobs/{job['id']}/metrics").json()["epochs"]]
            assert epochs == list(range(1, len(epochs) + 1))  # no epoch lost or written twice
            assert done["result"].get("resumed_from_epoch", 0) > 0
            assert http.get("/readyz").status_code == 200
    finally:
        with suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
