"""The jobs table is the queue, and this module is the only code that changes a job's status.

Every change is one guarded UPDATE whose WHERE names the expected status (and, for a worker, its lease
token). "0 rows updated" means someone else moved the job first: that is a conflict, never a success.
"""

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, and_, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from service.server import webhooks
from service.server.db import utcnow
from service.server.errors import Conflict
from service.server.spec import StoredSpec
from service.server.tables import EpochMetric, Job, JobStatus, Model

NOTIFY_CHANNEL = "mlps_jobs"


class LeaseLost(Exception):
    """The worker no longer holds this job: it was reclaimed, cancelled or finished elsewhere."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: str
    device_request: str
    attempt: int
    max_runtime_s: float | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def enqueue(*, session: Session, owner: str, dataset_id: str, spec: StoredSpec) -> Job:
    """Add a queued job for a validated, resolved spec."""
    job = Job(id=new_id("job"), owner=owner, dataset_id=dataset_id, spec=spec.to_json(), task=spec.task,
              status=JobStatus.QUEUED, device_request=spec.device, epochs=spec.training.epochs, epoch=0,
              attempts=0, cancel_requested=False)
    session.add(job)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # Delivered at commit: idle workers LISTENing wake at once instead of at their next poll.
        session.execute(text("SELECT pg_notify(:channel, :job_id)"), {"channel": NOTIFY_CHANNEL, "job_id": job.id})
    return job


def claim_next_job(*, session: Session, worker_id: str, device_requests: list[str], lease_s: float) -> Claim | None:
    """Atomically take the oldest queued job this worker can run; None when there is none."""
    candidate = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.device_request.in_(device_requests))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    now = utcnow()
    token = secrets.token_hex(16)
    row = session.execute(
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, worker_id=worker_id, lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_s), attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now), updated_at=now)
        .returning(Job.id, Job.device_request, Job.attempts, Job.spec)
    ).first()
    if row is None:
        return None
    return Claim(job_id=row[0], token=token, device_request=row[1], attempt=row[2],
                 max_runtime_s=(row[3] or {}).get("max_runtime_s"))


def _rowcount(session: Session, statement: Executable) -> int:
    """Rows an UPDATE or DELETE changed."""
    # Such a statement runs through a cursor; Session.execute is annotated with the plain Result, which has no
    # rowcount.
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _guarded(session: Session, job_id: str, token: str, **values: Any) -> None:
    """Update a running job this lease holds, or raise LeaseLost."""
    updated = _rowcount(session, update(Job)
                        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_token == token)
                        .values(updated_at=utcnow(), **values))
    if updated != 1:
        raise LeaseLost(job_id)


def _cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(*, session: Session, job_id: str, token: str, lease_s: float) -> bool:
    """Renew the lease; returns whether the user asked to cancel."""
    _guarded(session, job_id, token, lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    return _cancel_requested(session, job_id)


def start_attempt(*, session: Session, job_id: str, token: str, device: str, from_epoch: int = 0) -> None:
    """Record the attempt's device; metrics a lost attempt wrote after `from_epoch` are dropped."""
    _guarded(session, job_id, token, device=device, epoch=from_epoch, step_progress=None)
    session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch > from_epoch))


def record_epochs(*, session: Session, job_id: str, token: str, rows: list[tuple[int, dict[str, Any]]],
                  lease_s: float, checkpoint: dict[str, Any] | None = None) -> bool:
    """Store epochs' metrics (and the checkpoint taken after the last of them) and renew the lease.

    Returns whether the user asked to cancel.
    """
    extra: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint is not None else {}
    if rows:
        epoch, metrics = rows[-1]
        extra |= {"epoch": epoch, "latest_metrics": {"epoch": epoch, **metrics}, "step_progress": None}
    _guarded(session, job_id, token, lease_expires_at=utcnow() + timedelta(seconds=lease_s), **extra)
    if rows:
        now = utcnow()
        session.execute(insert(EpochMetric), [{"job_id": job_id, "epoch": e, "metrics": m, "created_at": now}
                                              for e, m in rows])
    return _cancel_requested(session, job_id)


def record_steps(*, session: Session, job_id: str, token: str, steps: dict[str, Any]) -> None:
    """Store where the epoch in progress stands (a long epoch's steps, rate and time left)."""
    _guarded(session, job_id, token, step_progress=steps)


def _terminal(status: JobStatus, **values: Any) -> dict[str, Any]:
    return {"status": status, "lease_token": None, "lease_expires_at": None, "finished_at": utcnow(),
            "step_progress": None, **values}


def succeed(*, session: Session, job_id: str, token: str, model: Model, result: dict[str, Any]) -> None:
    """running → succeeded, storing the model row (owned by the job's owner) in the same transaction."""
    _guarded(session, job_id, token, **_terminal(JobStatus.SUCCEEDED, model_id=model.id, result=result))
    owner = session.scalar(select(Job.owner).where(Job.id == job_id))
    if owner is None:
        raise LeaseLost(job_id)
    model.owner = owner
    session.add(model)
    session.flush()
    webhooks.jobs_ended(session=session, job_ids=[job_id])


def fail(*, session: Session, job_id: str, token: str, error: str, result: dict[str, Any] | None = None) -> None:
    """running → failed with a message a person can act on."""
    _guarded(session, job_id, token, **_terminal(JobStatus.FAILED, error=error, result=result))
    webhooks.jobs_ended(session=session, job_ids=[job_id])


def finish_cancelled(*, session: Session, job_id: str, token: str) -> None:
    """running → cancelled, once the job's process has stopped."""
    _guarded(session, job_id, token, **_terminal(JobStatus.CANCELLED, error="cancelled by request"))
    webhooks.jobs_ended(session=session, job_ids=[job_id])


def release(*, session: Session, job_id: str, token: str) -> None:
    """running → queued without counting the attempt (the worker is shutting down)."""
    _guarded(session, job_id, token, status=JobStatus.QUEUED, worker_id=None, lease_token=None,
             lease_expires_at=None, attempts=Job.attempts - 1, device=None)


def request_cancel(*, session: Session, job: Job) -> Job:
    """queued → cancelled at once; running → flagged, cancelled by its worker once the process stops."""
    now = utcnow()
    done = _rowcount(session, update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED)
                     .values(status=JobStatus.CANCELLED, cancel_requested=True, error="cancelled by request",
                             finished_at=now, updated_at=now))
    if done:
        webhooks.jobs_ended(session=session, job_ids=[job.id])
    else:
        done = _rowcount(session, update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING)
                         .values(cancel_requested=True, updated_at=now))
    session.flush()
    session.refresh(job)
    if not done:
        raise Conflict(f"job {job.id} is already {job.status}; only queued or running jobs can be cancelled")
    return job


def reap_expired(*, session: Session, max_attempts: int) -> list[str]:
    """Jobs whose lease ran out go back to the queue, or fail after too many lost attempts."""
    now = utcnow()
    expired = and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    cancelled = session.execute(
        update(Job).where(expired, Job.cancel_requested.is_(True))
        .values(**_terminal(JobStatus.CANCELLED, error="cancelled by request"), updated_at=now)
        .returning(Job.id)
    ).scalars().all()
    failed = session.execute(
        update(Job).where(expired, Job.attempts >= max_attempts)
        .values(**_terminal(JobStatus.FAILED, error=f"the job lost its worker {max_attempts} times "
                            "(worker crashed or machine restarted); giving up"), updated_at=now)
        .returning(Job.id)
    ).scalars().all()
    requeued = session.execute(
        update(Job).where(expired, Job.attempts < max_attempts)
        .values(status=JobStatus.QUEUED, worker_id=None, lease_token=None, lease_expires_at=None, device=None,
                updated_at=now)
        .returning(Job.id)
    ).scalars().all()
    webhooks.jobs_ended(session=session, job_ids=[*cancelled, *failed])
    return [*cancelled, *failed, *requeued]
