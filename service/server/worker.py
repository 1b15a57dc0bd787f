"""The worker: claims jobs, runs each in its own child process on one device, keeps leases alive."""

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update

from service.server import queue
from service.server.config import Settings
from service.server.db import (
    SchemaNotReady,
    make_engine,
    make_sessionmaker,
    require_schema_at_head,
    session_scope,
    utcnow,
)
from service.server.devices import Device, accepted_requests, choose, free_devices
from service.server.faults import HAND_BACK_EXIT, Backoff
from service.server.storage import Storage
from service.server.tables import Job, JobStatus
from service.server.tables import Worker as WorkerRow

log = logging.getLogger("mlps.worker")



def _noop() -> None:
    pass


def _context() -> "mp.context.ForkServerContext | mp.context.SpawnContext":  # quoted: no forkserver on Windows
    """Children fork from a server that imported torch once, so a job start does not pay for it again."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["typer", "service.server.preload"])
        return ctx
    return mp.get_context("spawn")


@dataclass
class Slot:
    """A running job: its child process, its device and its lease."""

    claim: queue.Claim
    device: Device
    process: mp.process.BaseProcess
    started: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    cancel_seen_at: float | None = None
    time_limit_hit: bool = False


class Wakeup:
    """Waits for the next poll, or less on PostgreSQL when a NOTIFY says a job was queued. A lost LISTEN
    connection (the server restarted) falls back to plain polling and reconnects on a later wait."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.conn: Any = None
        self._retry_at = 0.0
        if database_url.startswith("postgresql"):
            self._connect()

    def _connect(self) -> None:
        import psycopg
        from sqlalchemy import make_url

        url = make_url(self.database_url).set(drivername="postgresql")
        try:
            self.conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5)
            self.conn.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        except Exception as exc:
            log.warning("no LISTEN connection (%s); polling every interval until it is back", exc)
            self.close()
            self._retry_at = time.monotonic() + 5.0

    def wait(self, timeout: float, stop: threading.Event) -> None:
        if self.conn is None and self.database_url.startswith("postgresql") and time.monotonic() >= self._retry_at:
            self._connect()
        if self.conn is None:
            stop.wait(timeout)
            return
        try:
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                pass
        except Exception as exc:
            log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            self.close()
            self._retry_at = time.monotonic() + 1.0
            stop.wait(timeout)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class Worker:
    """Claims queued jobs its devices can run, one child process per job and device."""

    def __init__(self, settings: Settings, devices: list[Device], *, slots_per_device: int = 1,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        self.devices = devices
        self.slots_per_device = slots_per_device
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.storage = Storage(settings.data_dir)
        self.slots: dict[str, Slot] = {}
        self._stop = threading.Event()
        self._ctx = _context()
        self._last_reap = 0.0
        self._last_beat = 0.0
        self._started = False
        self._space_warned = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Check the schema and register this worker."""
        require_schema_at_head(self.engine)
        self.storage.ensure()
        # Start the fork server now: its one-time `import torch` must not happen while a claimed job's
        # lease waits for heartbeats.
        warm = self._ctx.Process(target=_noop, name="mlps-warmup")
        warm.start()
        warm.join()
        with session_scope(self.sessions) as s:
            s.add(WorkerRow(id=self.id, host=socket.gethostname(), pid=os.getpid(),
                            devices=[d.as_dict() for d in self.devices]))
        self._started = True
        log.info("worker %s ready on %s", self.id, ", ".join(d.description for d in self.devices))

    def stop(self, *_args: object) -> None:
        """Stop claiming; running jobs are handed back to the queue."""
        self._stop.set()

    def run(self) -> None:
        """Serve until stopped (SIGTERM or SIGINT). A failed database call or a full disk is logged and retried
        with backoff: the worker outlives the fault and carries on by itself once it clears."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                self.start()
                break
            except SchemaNotReady:
                raise
            except Exception as exc:
                delay = backoff.failed()
                log.warning("worker cannot start yet (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                self._stop.wait(delay)
        if self._stop.is_set() and not self._started:
            return
        backoff.succeeded()
        wakeup = Wakeup(self.settings.database_url)
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception as exc:
                    delay = backoff.failed()
                    if backoff.failures == 1:
                        log.exception("worker round failed; retrying with backoff")
                    else:
                        log.warning("worker round failed again (%s: %s); retrying in %.1f s", type(exc).__name__,
                                    exc, delay)
                    self._stop.wait(delay)
                    continue
                if backoff.succeeded():
                    log.info("worker %s recovered", self.id)
                wakeup.wait(self.settings.poll_interval_s, self._stop)
        finally:
            wakeup.close()
            self.shutdown()

    def run_once(self, timeout_s: float = 600.0) -> str | None:
        """Claim at most one job, run it to the end, and return its id (None if the queue was empty)."""
        claim = self._claim()
        if claim is None:
            return None
        deadline = time.monotonic() + timeout_s
        while self.slots and time.monotonic() < deadline:
            self._supervise()
            if self.slots:
                time.sleep(0.05)
        return claim.job_id

    def tick(self) -> None:
        """One round: reap, supervise children, heartbeat, claim while a device is free."""
        now = time.monotonic()
        if now - self._last_reap >= self.settings.reap_every_s:
            self._last_reap = now
            with session_scope(self.sessions) as s:
                reaped = queue.reap_expired(session=s, max_attempts=self.settings.max_attempts)
            if reaped:
                log.warning("reclaimed jobs with expired leases: %s", ", ".join(reaped))
        self._supervise()
        if now - self._last_beat >= self.settings.heartbeat_s:
            self._last_beat = now
            with session_scope(self.sessions) as s:
                s.execute(update(WorkerRow).where(WorkerRow.id == self.id).values(heartbeat_at=utcnow()))
        while not self._stop.is_set() and self._claim() is not None:
            pass

    def shutdown(self) -> None:
        """Stop every child and hand its job back to the queue without counting the attempt."""
        for job_id, slot in list(self.slots.items()):
            self._terminate(slot)
            try:
                with session_scope(self.sessions) as s:
                    queue.release(session=s, job_id=job_id, token=slot.claim.token)
                log.info("job %s handed back to the queue", job_id)
            except queue.LeaseLost:
                pass  # it finished or was cancelled meanwhile
            except Exception as exc:  # the database is down: the lease runs out and the reaper requeues it
                log.warning("job %s not handed back (%s); it is requeued when its lease expires", job_id, exc)
            self.slots.pop(job_id, None)
        if self._started:
            try:
                with session_scope(self.sessions) as s:
                    s.execute(update(WorkerRow).where(WorkerRow.id == self.id).values(stopped_at=utcnow()))
            except Exception as exc:
                log.warning("worker %s could not record its stop (%s)", self.id, exc)
        self.engine.dispose()

    # ------------------------------------------------------------ jobs

    def _free_devices(self) -> list[Device]:
        """Devices with a free slot: at most slots_per_device jobs run on each."""
        return free_devices(self.devices, [slot.device.name for slot in self.slots.values()], self.slots_per_device)

    def _space_left(self) -> bool:
        """Enough free space in the data dir for a job's checkpoints and model; warns once per shortage."""
        free = shutil.disk_usage(self.storage.root).free
        if free >= self.settings.min_free_bytes:
            if self._space_warned:
                log.info("free space in %s is back (%.0f MB); claiming jobs again", self.storage.root, free / 1e6)
            self._space_warned = False
            return True
        if not self._space_warned:
            log.warning("only %.0f MB free in %s (MLPS_MIN_FREE_BYTES=%d); claiming no job until space is freed",
                        free / 1e6, self.storage.root, self.settings.min_free_bytes)
        self._space_warned = True
        return False

    def _claim(self) -> queue.Claim | None:
        free = self._free_devices()
        if not free or not self._space_left():
            return None
        with session_scope(self.sessions) as s:
            claim = queue.claim_next_job(session=s, worker_id=self.id, device_requests=accepted_requests(free),
                                         lease_s=self.settings.lease_s)
        if claim is None:
            return None
        device = choose(claim.device_request, free, busy=set())
        if device is None:  # claim_next_job takes only jobs that one of the free devices accepts
            raise RuntimeError(f"job {claim.job_id} asks for device {claim.device_request!r}, which none of "
                               f"{[d.name for d in free]} serves")
        log.info("job %s claimed (attempt %d) on %s", claim.job_id, claim.attempt, device.description,
                 extra={"job_id": claim.job_id})
        from service.server.runner import run_job

        process = self._ctx.Process(
            target=run_job, name=f"mlps-job-{claim.job_id}",
            args=(self.settings.model_dump_json(), claim.job_id, claim.token, device.name, device.description,
                  os.getpid(), 1 + sum(slot.device.name == device.name for slot in self.slots.values())),
        )
        process.start()
        self.slots[claim.job_id] = Slot(claim=claim, device=device, process=process)
        return claim

    def _supervise(self) -> None:
        for job_id, slot in list(self.slots.items()):
            if not slot.process.is_alive():
                slot.process.join()
                self._after_exit(slot)
                del self.slots[job_id]
                continue
            now = time.monotonic()
            if now - slot.last_heartbeat >= self.settings.heartbeat_s:
                slot.last_heartbeat = now
                try:
                    with session_scope(self.sessions) as s:
                        cancel = queue.heartbeat(session=s, job_id=job_id, token=slot.claim.token,
                                                 lease_s=self.settings.lease_s)
                except queue.LeaseLost:
                    log.warning("job %s: lease lost, stopping its process", job_id)
                    self._terminate(slot)
                    del self.slots[job_id]
                    continue
                if cancel and slot.cancel_seen_at is None:
                    slot.cancel_seen_at = now
            if slot.cancel_seen_at is not None and now - slot.cancel_seen_at > self.settings.cancel_grace_s:
                # The child stops by itself at the end of an epoch; a very long epoch is cut short here.
                self._terminate(slot)
            limit = slot.claim.max_runtime_s
            if limit is not None and now - slot.started > limit + self.settings.cancel_grace_s:
                # The child checks its time at each epoch end; an epoch that never ends is stopped here.
                slot.time_limit_hit = True
                self._terminate(slot)

    def _after_exit(self, slot: Slot) -> None:
        """The child is gone: if it left its job running, settle the job here."""
        job_id, token = slot.claim.job_id, slot.claim.token
        with session_scope(self.sessions) as s:
            job = s.get(Job, job_id)
            if job is None or job.status != JobStatus.RUNNING or job.lease_token != token:
                return
            try:
                if job.cancel_requested:
                    queue.finish_cancelled(session=s, job_id=job_id, token=token)
                elif slot.process.exitcode == HAND_BACK_EXIT:
                    queue.release(session=s, job_id=job_id, token=token)
                    log.info("job %s handed back to the queue: it resumes from its last checkpoint", job_id)
                elif slot.time_limit_hit:
                    queue.fail(session=s, job_id=job_id, token=token,
                               error=f"the job exceeded its time limit (max_runtime_s={slot.claim.max_runtime_s}) "
                                     "within one epoch; raise max_runtime_s or use a smaller data set per epoch")
                else:
                    code = slot.process.exitcode
                    why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    queue.fail(session=s, job_id=job_id, token=token,
                               error=f"the training process stopped unexpectedly ({why}); it may have run out "
                                     "of memory: try a smaller batch_size or network")
            except queue.LeaseLost:
                pass

    def _terminate(self, slot: Slot) -> None:
        proc = slot.process
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
