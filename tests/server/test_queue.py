"""The queue's guarded state changes, on a real migrated SQLite file."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update

from service.schemas import JobCreate
from service.server import queue
from service.server.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.server.errors import Conflict
from service.server.spec import resolve
from service.server.tables import Dataset, Job, JobStatus

BOTH_DATABASES = True
SPEC = {"dataset_id": "ds_00000000000000aa", "target": "y", "training": {"epochs": 3}}


@pytest.fixture
def sessions(migrated):
    engine = make_engine(migrated.database_url)
    factory = make_sessionmaker(engine)
    with session_scope(factory) as s:
        s.add(Dataset(id="ds_00000000000000aa", name="d", format="csv", n_rows=1, n_columns=1, columns=[],
                      size_bytes=1, sha256="0" * 64))
    yield factory
    engine.dispose()


def enqueue(sessions, n=1, device="auto") -> list[str]:
    with session_scope(sessions) as s:
        return [queue.enqueue(session=s, owner="admin", dataset_id="ds_00000000000000aa",
                              spec=resolve(JobCreate(**{**SPEC, "device": device}), targets=["y"], features=["x"],
                                           task="classification", n_rows=1, max_runtime_s=3600)).id
                for _ in range(n)]


def claim(sessions, worker="w1", requests=("auto", "cpu")):
    with session_scope(sessions) as s:
        return queue.claim_next_job(session=s, worker_id=worker, device_requests=list(requests), lease_s=30)


def status(sessions, job_id) -> Job:
    with session_scope(sessions) as s:
        return s.get(Job, job_id)


def test_claims_oldest_first_and_counts_attempts(sessions):
    ids = enqueue(sessions, 3)
    got = [claim(sessions).job_id for _ in range(3)]
    assert got == ids
    assert claim(sessions) is None
    job = status(sessions, ids[0])
    assert job.status == JobStatus.RUNNING and job.attempts == 1 and job.worker_id == "w1"


def test_concurrent_claims_never_share_a_job(sessions):
    ids = enqueue(sessions, 20)
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(lambda i: claim(sessions, worker=f"w{i}"), range(40)))
    won = [c.job_id for c in claims if c is not None]
    assert sorted(won) == sorted(ids)  # each job exactly once


def test_cpu_worker_does_not_take_gpu_jobs(sessions):
    (job_id,) = enqueue(sessions, 1, device="cuda")
    assert claim(sessions, requests=("auto", "cpu")) is None
    assert claim(sessions, requests=("auto", "cpu", "cuda", "cuda:0")).job_id == job_id


def test_a_stale_token_can_change_nothing(sessions):
    (job_id,) = enqueue(sessions)
    c = claim(sessions)
    with session_scope(sessions) as s, pytest.raises(queue.LeaseLost):
        queue.record_epochs(session=s, job_id=job_id, token="not-the-token", rows=[(1, {})], lease_s=30)
    with session_scope(sessions) as s:
        queue.fail(session=s, job_id=job_id, token=c.token, error="boom")
    with session_scope(sessions) as s, pytest.raises(queue.LeaseLost):
        queue.fail(session=s, job_id=job_id, token=c.token, error="again")
    assert status(sessions, job_id).error == "boom"


def test_expired_leases_are_requeued_then_failed_after_max_attempts(sessions):
    (job_id,) = enqueue(sessions)
    for attempt in (1, 2):
        c = claim(sessions)
        assert c.attempt == attempt
        with session_scope(sessions) as s:
            s.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
            assert queue.reap_expired(session=s, max_attempts=2) == [job_id]
        with session_scope(sessions) as s, pytest.raises(queue.LeaseLost):
            queue.heartbeat(session=s, job_id=job_id, token=c.token, lease_s=30)
    job = status(sessions, job_id)
    assert job.status == JobStatus.FAILED and "lost its worker 2 times" in job.error


def test_release_hands_back_without_counting_the_attempt(sessions):
    (job_id,) = enqueue(sessions)
    c = claim(sessions)
    with session_scope(sessions) as s:
        queue.release(session=s, job_id=job_id, token=c.token)
    job = status(sessions, job_id)
    assert job.status == JobStatus.QUEUED and job.attempts == 0


def test_cancel_running_waits_for_the_worker(sessions):
    (job_id,) = enqueue(sessions)
    c = claim(sessions)
    with session_scope(sessions) as s:
        job = queue.request_cancel(session=s, job=s.get(Job, job_id))
        assert job.status == JobStatus.RUNNING and job.cancel_requested
    with session_scope(sessions) as s:
        assert queue.heartbeat(session=s, job_id=job_id, token=c.token, lease_s=30) is True
        queue.finish_cancelled(session=s, job_id=job_id, token=c.token)
    with session_scope(sessions) as s, pytest.raises(Conflict, match="already cancelled"):
        queue.request_cancel(session=s, job=s.get(Job, job_id))


def test_a_new_attempt_drops_the_lost_attempts_metrics(sessions):
    from service.server.tables import EpochMetric

    (job_id,) = enqueue(sessions)
    c = claim(sessions)
    with session_scope(sessions) as s:
        queue.start_attempt(session=s, job_id=job_id, token=c.token, device="cpu")
        for epoch in (1, 2):
            queue.record_epochs(session=s, job_id=job_id, token=c.token, rows=[(epoch, {"x": 1})], lease_s=30)
        s.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        queue.reap_expired(session=s, max_attempts=3)
    c2 = claim(sessions)
    with session_scope(sessions) as s:
        queue.start_attempt(session=s, job_id=job_id, token=c2.token, device="cpu")
        queue.record_epochs(session=s, job_id=job_id, token=c2.token, rows=[(1, {"x": 2})], lease_s=30)
    with session_scope(sessions) as s:
        rows = s.query(EpochMetric).filter_by(job_id=job_id).all()
        assert [(r.epoch, r.metrics) for r in rows] == [(1, {"x": 2})]
