"""Workers as the API sees them, and the reaper that returns jobs with expired leases to the queue."""

import logging
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.server import queue
from service.server.auth import Principal, visible
from service.server.db import session_scope, utcnow
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
    running: dict[str, list[str]] = {}
    jobs = visible(select(Job.id, Job.worker_id).where(Job.status == JobStatus.RUNNING), Job, principal)
    for job_id, worker_id in session.execute(jobs):
        running.setdefault(worker_id, []).append(job_id)
    now = utcnow()
    return [{"id": w.id, "host": w.host, "pid": w.pid, "devices": w.devices, "started_at": w.started_at,
             "heartbeat_at": w.heartbeat_at, "stopped_at": w.stopped_at,
             "alive": w.stopped_at is None and (now - w.heartbeat_at).total_seconds() <= stale_after_s,
             "running_jobs": sorted(running.get(w.id, []))} for w in workers]


class Reaper:
    """A background thread that requeues (or fails) jobs whose lease expired, every `every_s` seconds."""

    def __init__(self, sessions: sessionmaker, *, max_attempts: int, every_s: float) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlps-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with session_scope(self.sessions) as s:
                    reaped = queue.reap_expired(session=s, max_attempts=self.max_attempts)
                if reaped:
                    log.warning("reclaimed jobs with expired leases: %s", ", ".join(reaped))
            except Exception:
                log.exception("reaper round failed; trying again")
