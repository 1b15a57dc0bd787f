"""Workers as the API sees them, readiness, and the reaper: it returns jobs with expired leases to the queue and
removes abandoned temporary files and old checkpoints (service.server.cleanup)."""

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from service.server import idempotency, queue
from service.server.auth import Principal, visible
from service.server.cleanup import sweep
from service.server.db import SchemaNotReady, probe_write, require_schema_at_head, session_scope, utcnow
from service.server.faults import Backoff
from service.server.storage import Storage, StorageUnavailable
from service.server.tables import Job, JobStatus, Worker

log = logging.getLogger("mlps.fleet")


LIVENESS_SLACK_S = 5.0


def liveness_window_s(heartbeat_s: float) -> float:
    """A worker whose last heartbeat is older than this (three missed beats and 5 s) counts as gone."""
    return 3 * heartbeat_s + LIVENESS_SLACK_S


def list_workers(*, session: Session, principal: Principal, stale_after_s: float,
                 include_stopped: bool) -> list[dict[str, Any]]:
    """Workers with their devices, liveness and the running jobs the caller may see."""
    query = select(Worker).order_by(Worker.started_at.desc())
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None),
                            Worker.heartbeat_at >= utcnow() - timedelta(seconds=stale_after_s))
    workers = session.scalars(query).all()
    running: dict[str | None, list[str]] = {}
    jobs = visible(select(Job.id, Job.worker_id).where(Job.status == JobStatus.RUNNING), Job, principal)
    for job_id, worker_id in session.execute(jobs):
        running.setdefault(worker_id, []).append(job_id)
    now = utcnow()
    return [{"id": w.id, "host": w.host, "pid": w.pid, "devices": w.devices, "started_at": w.started_at,
             "heartbeat_at": w.heartbeat_at, "stopped_at": w.stopped_at,
             "alive": w.stopped_at is None and (now - w.heartbeat_at).total_seconds() <= stale_after_s,
             "running_jobs": sorted(running.get(w.id, []))} for w in workers]


def not_ready(*, engine: Engine, sessions: sessionmaker[Session], storage: Storage, heartbeat_s: float,
              min_free_bytes: int) -> list[str]:
    """Why this deployment cannot do its work now (empty: ready): the database unreachable, not migrated or not
    writable; no live worker to train queued jobs; the data directory (nearly) full; the bucket unreachable."""
    reasons = []
    try:
        require_schema_at_head(engine)
        probe_write(engine)
        with sessions() as session:
            alive = session.scalar(select(func.count()).select_from(Worker).where(
                Worker.stopped_at.is_(None),
                Worker.heartbeat_at >= utcnow() - timedelta(seconds=liveness_window_s(heartbeat_s))))
        if not alive:
            reasons.append("no live worker: queued jobs will wait until one starts (`mlps worker`)")
    except SchemaNotReady as exc:
        reasons.append(str(exc))
    except Exception as exc:
        reasons.append(f"database unavailable or not writable ({type(exc).__name__}: {str(exc)[:200]})")
    free = shutil.disk_usage(storage.root).free
    if free < min_free_bytes:
        reasons.append(f"the data directory has {free / 1e6:.0f} MB free, less than MLPS_MIN_FREE_BYTES "
                       f"({min_free_bytes / 1e6:.0f} MB)")
    if storage.bucket is not None:
        try:
            storage.bucket.check()
        except StorageUnavailable as exc:
            reasons.append(str(exc))
    return reasons


@dataclass(frozen=True)
class Upkeep:
    """What the reaper removes besides lost leases (see service.server.cleanup); None: nothing."""

    storage: Storage
    temp_max_age_s: float
    checkpoint_keep_s: float
    every_s: float


class Reaper:
    """A background thread that requeues (or fails) jobs whose lease expired every `every_s` seconds and, with
    `upkeep`, sweeps abandoned files at start and every `upkeep.every_s`. A failed round (the database down, the
    disk full) is logged and retried with backoff; the thread never dies of it."""

    def __init__(self, sessions: sessionmaker[Session], *, max_attempts: int, every_s: float,
                 upkeep: Upkeep | None = None) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.every_s = every_s
        self.upkeep = upkeep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlps-reaper", daemon=True)
        self._next_sweep = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def round(self) -> None:
        """One round: requeue lost jobs, delete expired idempotency keys; sweep files when a sweep is due."""
        with session_scope(self.sessions) as s:
            reaped = queue.reap_expired(session=s, max_attempts=self.max_attempts)
        with session_scope(self.sessions) as s:
            idempotency.expire(session=s)
        if reaped:
            log.warning("reclaimed jobs with expired leases: %s", ", ".join(reaped))
        if self.upkeep is not None and time.monotonic() >= self._next_sweep:
            with session_scope(self.sessions) as s:
                sweep(session=s, storage=self.upkeep.storage, temp_max_age_s=self.upkeep.temp_max_age_s,
                      checkpoint_keep_s=self.upkeep.checkpoint_keep_s)
            self._next_sweep = time.monotonic() + self.upkeep.every_s

    def _run(self) -> None:
        backoff = Backoff(cap_s=max(self.every_s, 30.0))
        delay = 0.0 if self.upkeep is not None else self.every_s  # the startup sweep runs at once
        while not self._stop.wait(delay):
            try:
                self.round()
            except Exception as exc:
                delay = backoff.failed()
                log.warning("reaper round failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                continue
            if backoff.succeeded():
                log.info("reaper recovered")
            delay = self.every_s
