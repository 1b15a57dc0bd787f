"""Abandoned temporary files and the checkpoints of ended jobs are removed; nothing in use is."""

import os
import time
from datetime import timedelta

from service.server.cleanup import sweep, sweep_checkpoints, sweep_temp
from service.server.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.server.storage import Storage
from service.server.tables import Job, JobStatus


def _storage(settings) -> Storage:
    storage = Storage(settings.data_dir)
    storage.ensure()
    return storage


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_old_temp_files_go_and_fresh_ones_stay(migrated):
    storage = _storage(migrated)
    old_file, fresh_file = storage.temp_path(".csv"), storage.temp_path(".csv")
    old_file.write_bytes(b"x" * 1000)
    old_dir = storage.temp_dir()
    (old_dir / "part").write_bytes(b"y" * 500)
    _age(old_file, 7200)
    _age(old_dir, 7200)
    swept = sweep_temp(storage, max_age_s=3600)
    assert (swept.temp_files, swept.bytes_freed) == (2, 1500)
    assert not old_file.exists() and not old_dir.exists() and fresh_file.exists()


def _job(session, job_id: str, status: str, finished_ago_s: float | None) -> None:
    finished = None if finished_ago_s is None else utcnow() - timedelta(seconds=finished_ago_s)
    session.add(Job(id=job_id, spec={}, task="classification", status=status, epochs=1, finished_at=finished))


def test_checkpoints_of_long_ended_and_unknown_jobs_go(migrated):
    storage = _storage(migrated)
    engine = make_engine(migrated.database_url)
    sessions = make_sessionmaker(engine)
    ids = {"old_failed": "job_" + "a" * 16, "new_failed": "job_" + "b" * 16, "running": "job_" + "c" * 16,
           "queued": "job_" + "d" * 16, "unknown": "job_" + "e" * 16, "old_cancelled": "job_" + "f" * 16}
    with session_scope(sessions) as s:
        _job(s, ids["old_failed"], JobStatus.FAILED, 7200)
        _job(s, ids["old_cancelled"], JobStatus.CANCELLED, 7200)
        _job(s, ids["new_failed"], JobStatus.FAILED, 10)
        _job(s, ids["running"], JobStatus.RUNNING, None)
        _job(s, ids["queued"], JobStatus.QUEUED, None)
    for job_id in ids.values():
        folder = storage.checkpoint_dir(job_id)
        folder.mkdir(parents=True)
        (folder / "ckpt-1.safetensors").write_bytes(b"z" * 100)
    with session_scope(sessions) as s:
        swept = sweep_checkpoints(session=s, storage=storage, keep_s=3600)
    left = {name for name, job_id in ids.items() if storage.checkpoint_dir(job_id).exists()}
    assert left == {"new_failed", "running", "queued"}
    assert (swept.checkpoint_dirs, swept.bytes_freed) == (3, 300)
    with session_scope(sessions) as s:  # nothing left to do: a second sweep removes nothing
        assert sweep(session=s, storage=storage, temp_max_age_s=3600, checkpoint_keep_s=3600).checkpoint_dirs == 0
    engine.dispose()
