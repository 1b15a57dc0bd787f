"""/jobs/{id}/events: a job's progress as Server-Sent Events (status changes and every epoch's metrics).

Event ids are "cycle.epoch.phase", compared as integer triples, so they grow monotonically within a job:

- queued, waiting for attempt a+1:        (a+1, 0, 0)
- running attempt a:                       (a, 0, 1)
- epoch k of attempt a:                    (a, k, 2)
- final status (succeeded/failed/cancelled): (a+1, 0, 3)

A long epoch also sends `steps` events (data: job_id, epoch in progress, epochs, step, steps, samples_per_second,
eta_s) every few seconds. They carry no id: they are a view of the moment, not part of the history a client
resumes from.

where a is the job's `attempts`. An id is a pure function of the job's row and its epoch rows, so a client that
re-connects with `Last-Event-ID` gets exactly the events after that one: none lost, none repeated.

Epoch numbers only go up along a stream: when a job whose worker was lost resumes from a checkpoint, the epochs up
to the checkpoint (kept from the earlier attempt) and any the lost attempt recorded past it are not sent again; the
stream goes on with the first epoch number it has not sent.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.schemas import Progress
from service.server import jobs
from service.server.api.deps import PrincipalDep
from service.server.auth import Principal
from service.server.errors import InvalidInput, problem_responses
from service.server.tables import TERMINAL_STATUSES, EpochMetric, JobStatus

router = APIRouter(tags=["jobs"])

POLL_INTERVAL_S = 0.2
KEEPALIVE_S = 15.0
RETRY_MS = 1000

PHASE_QUEUED, PHASE_RUNNING, PHASE_EPOCH, PHASE_FINAL = 0, 1, 2, 3
FINAL = {str(s) for s in TERMINAL_STATUSES}


@dataclass(frozen=True, order=True)
class EventId:
    """Position of an event in a job's stream; ordered like the events."""

    cycle: int
    epoch: int
    phase: int

    def __str__(self) -> str:
        return f"{self.cycle}.{self.epoch}.{self.phase}"

    @classmethod
    def parse(cls, text: str) -> "EventId":
        """Read an id this endpoint sent, or raise InvalidInput."""
        parts = text.strip().split(".")
        if len(parts) != 3 or not all(p.isdigit() and len(p) <= 12 for p in parts):
            raise InvalidInput(f"Last-Event-ID {text[:40]!r} is not an id this stream sent (expected "
                               "'cycle.epoch.phase', e.g. '1.12.2'); reconnect without it to start over",
                               errors=[{"field": "Last-Event-ID", "message": "expected cycle.epoch.phase"}])
        return cls(*(int(p) for p in parts))


@dataclass(frozen=True)
class JobEvent:
    id: EventId
    kind: str  # "status" or "epoch"
    data: dict[str, Any]

    def encode(self, with_id: bool = True) -> str:
        """The event in text/event-stream framing."""
        head = f"id: {self.id}\n" if with_id else ""
        return f"{head}event: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of a job: its status and the events its state implies after a given id."""

    status: str
    events: list[JobEvent]
    steps: JobEvent | None = None  # where the epoch in progress stands, when it is long


def read_snapshot(sessions: sessionmaker[Session], job_id: str, principal: Principal, epoch_floor: int = 0) -> Snapshot:
    """The job's events (in order) from one read transaction; epochs only past `epoch_floor`."""
    with sessions() as session, session.begin():
        job = jobs.get(session=session, job_id=job_id, principal=principal)
        view = jobs.to_read(job).model_dump(mode="json")
        progress = Progress.of(job.epoch, job.epochs, job.step_progress)
        view["progress"] = progress.model_dump(mode="json")
        attempt = job.attempts
        status = str(job.status)
        status_event = JobEvent(
            id=EventId(attempt + 1, 0, PHASE_QUEUED) if status == JobStatus.QUEUED
            else EventId(attempt, 0, PHASE_RUNNING) if status == JobStatus.RUNNING
            else EventId(attempt + 1, 0, PHASE_FINAL),
            kind="status", data=view)
        if status == JobStatus.QUEUED:
            return Snapshot(status=status, events=[status_event])
        epoch_events: list[JobEvent] = []
        # The attempt's epoch rows are current once it recorded its device (start_attempt, which also deletes a
        # lost attempt's rows in the same transaction); before that they may belong to a previous attempt.
        if job.device is not None:
            rows = session.execute(
                select(EpochMetric.epoch, EpochMetric.metrics)
                .where(EpochMetric.job_id == job.id, EpochMetric.epoch > epoch_floor).order_by(EpochMetric.epoch)
            ).all()
            epoch_events = [JobEvent(id=EventId(attempt, epoch, PHASE_EPOCH), kind="epoch",
                                     data={"job_id": job.id, "epoch": epoch, "epochs": job.epochs, "metrics": metrics})
                            for epoch, metrics in rows]
        if status == JobStatus.RUNNING:
            steps = None
            if progress.step is not None:
                steps = JobEvent(id=EventId(attempt, job.epoch + 1, PHASE_EPOCH), kind="steps",
                                 data={"job_id": job.id, **view["progress"], "epoch": job.epoch + 1})
            return Snapshot(status=status, events=[status_event, *epoch_events], steps=steps)
        return Snapshot(status=status, events=[*epoch_events, status_event])


async def job_event_stream(request: Request, job_id: str, after: EventId | None,
                           principal: Principal) -> AsyncIterator[str]:
    """Poll the database and yield every new event; stop after the final status or when the client leaves."""
    sessions = request.app.state.sessions
    poll_s = getattr(request.app.state, "events_poll_interval_s", POLL_INTERVAL_S)
    keepalive_s = getattr(request.app.state, "events_keepalive_s", KEEPALIVE_S)
    yield f"retry: {RETRY_MS}\n\n"
    last_sent = after
    epoch_floor = after.epoch if after is not None and after.phase == PHASE_EPOCH else 0
    seen_status: str | None = None
    last_steps: dict[str, Any] | None = None
    last_write = time.monotonic()
    while True:
        snapshot = await run_in_threadpool(read_snapshot, sessions, job_id, principal, epoch_floor)
        for event in snapshot.events:
            if last_sent is None or event.id > last_sent:
                yield event.encode()
                last_sent = event.id
                last_write = time.monotonic()
                if event.kind == "epoch":
                    epoch_floor = event.id.epoch
            elif event.kind == "status" and seen_status is not None and snapshot.status != seen_status:
                # A worker shutting down hands its job back and the attempt count goes back by one; say so,
                # without an id, so that the ids already sent stay the resume point.
                yield event.encode(with_id=False)
                last_write = time.monotonic()
        if snapshot.steps is not None and snapshot.steps.data != last_steps:
            yield snapshot.steps.encode(with_id=False)
            last_steps = snapshot.steps.data
            last_write = time.monotonic()
        seen_status = snapshot.status
        if snapshot.status in FINAL:
            return
        if time.monotonic() - last_write >= keepalive_s:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)


@router.get(
    "/jobs/{job_id}/events", summary="Live status and per-epoch metrics (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "Events `status` (data: the job) and `epoch` (data: job_id, epoch, epochs, "
                                    "metrics), each with an id; in a long epoch, `steps` (data: job_id, "
                                    "epoch, epochs, step, steps, samples_per_second, eta_s) without one; "
                                    "ends after the final status"},
               **problem_responses(404, 422)})
async def job_events(request: Request, job_id: str, principal: PrincipalDep,
                     last_event_id: str | None = Header(default=None, alias="Last-Event-ID",
                                                        description="Resume after this event id")
                     ) -> StreamingResponse:
    """Stream a job's status changes and epochs as Server-Sent Events until it ends."""
    after = EventId.parse(last_event_id) if last_event_id else None

    def exists() -> None:
        with request.app.state.sessions() as session:
            jobs.get(session=session, job_id=job_id, principal=principal)

    await run_in_threadpool(exists)  # 404 problem before the stream starts
    return StreamingResponse(job_event_stream(request, job_id, after, principal), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
