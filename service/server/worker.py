"""The worker: claims jobs, runs each in its own child process on one device, keeps leases alive."""

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update

from service.server import cleanup, queue
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
from service.server.storage import Storage, StorageUnavailable
from service.server.tables import Job, JobStatus
from service.server.tables import Worker as WorkerRow

log = logging.getLogger("mlps.worker")



def _noop() -> None:
    pass


def _context() -> "mp.context.ForkServerContext | mp.context.SpawnContext":  # quoted: no forkserver on Windows
    """Children fork from a server that imported torch once, so a job start does not pay for it again."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["typer", "service.server.preload", *_main_modules()])
        return ctx
    return mp.get_context("spawn")


def _main_modules() -> list[str]:
    """What each child re-runs as its `__main__` before the job starts (multiprocessing does so in every child):
    `python -m service.cli` runs that module, the `mlps` script imports it. Imported once in the fork server, its
    imports (the client, the CLI's commands: 0.15 s measured) are already there in every child."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    names = ["service.cli"]
    if spec_name and spec_name.startswith("service.") and spec_name not in names:
        names.append(spec_name)
    return names


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


# How often a worker on SQLite looks whether the database file changed (a stat of two files: microseconds).
SQLITE_WATCH_S = 0.01


class Wakeup:
    """Waits for the next poll, or less: on PostgreSQL when a NOTIFY says a job was queued, on SQLite as soon as
    the database file or its write-ahead log changes (any commit, a new job's included), so that a job queued by
    the API is claimed within SQLITE_WATCH_S rather than up to a poll interval later. A lost LISTEN connection
    (the server restarted) falls back to plain polling and reconnects on a later wait."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.conn: Any = None
        self._retry_at = 0.0
        self.watched = _sqlite_files(database_url)
        self._seen: tuple[tuple[int, int], ...] | None = None
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
        if self.watched:
            self._watch(timeout, stop)
            return
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

    def _watch(self, timeout: float, stop: threading.Event) -> None:
        """Until `timeout`, a stop, or a change of the SQLite files' sizes or modification times since the last
        wait ended (so that a job queued while the worker was busy between two waits is not missed)."""
        deadline = time.monotonic() + timeout
        seen = self._seen if self._seen is not None else _signature(self.watched)
        while not stop.is_set():
            left = deadline - time.monotonic()
            now = _signature(self.watched)
            if left <= 0 or now != seen or stop.wait(min(SQLITE_WATCH_S, left)):
                break
        self._seen = _signature(self.watched)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def _sqlite_files(database_url: str) -> list[str]:
    """The database file of a SQLite URL and its write-ahead log; none for other databases or in memory."""
    if not database_url.startswith("sqlite"):
        return []
    from sqlalchemy import make_url

    path = make_url(database_url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return []
    return [path, path + "-wal"]


def _signature(paths: list[str]) -> tuple[tuple[int, int], ...]:
    """(size, modification time) of each file; (-1, -1) for one that does not exist (yet)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


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
        self.storage = Storage.from_settings(settings)
        self.slots: dict[str, Slot] = {}
        self._stop = threading.Event()
        self._ctx = _context()
        self._last_reap = 0.0
        self._last_beat = 0.0
        self._last_sweep: float | None = None  # None: this host's leftovers are swept at the first round
        self._started = False
        self._space_warned = False
        # After a job was handed back (the bucket or the database failed under it), the storage is checked before
        # the next claim, with backoff: no claim-and-hand-back loop while the bucket is away.
        self._storage_suspect = False
        self._storage_backoff = Backoff(first_s=1.0, cap_s=30.0)
        self._storage_retry_at = 0.0

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
        if self._last_sweep is None or now - self._last_sweep >= self.settings.sweep_every_s:
            self._last_sweep = now
            self.sweep()
        while not self._stop.is_set() and self._claim() is not None:
            pass

    def sweep(self) -> cleanup.Swept:
        """Remove what killed jobs and uploads left on this host's disk (tmp/, checkpoints/ of jobs that run
        nowhere); a failure is logged, the next sweep tries again."""
        try:
            with session_scope(self.sessions) as s:
                swept = cleanup.sweep_host(session=s, storage=self.storage, running_here=set(self.slots),
                                           max_age_s=self.settings.temp_max_age_s)
        except Exception as exc:
            log.warning("worker %s: sweeping its leftovers failed (%s: %s)", self.id, type(exc).__name__, exc)
            return cleanup.Swept()
        if swept.temp_files or swept.checkpoint_dirs:
            log.info("worker %s removed %d temporary file(s) and %d local checkpoint folder(s) (%.1f MB)", self.id,
                     swept.temp_files, swept.checkpoint_dirs, swept.bytes_freed / 1e6)
        return swept

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

    def _storage_ok(self) -> bool:
        """False while the storage that failed a job is still unreachable (checked at most once per backoff step)."""
        if not self._storage_suspect:
            return True
        now = time.monotonic()
        if now < self._storage_retry_at:
            return False
        try:
            self.storage.check()
        except StorageUnavailable as exc:
            delay = self._storage_backoff.failed()
            if self._storage_backoff.failures == 1:
                log.warning("%s; claiming no job until it answers (checking again with backoff)", exc)
            self._storage_retry_at = now + delay
            return False
        if self._storage_backoff.succeeded():
            log.info("storage %s answers again; claiming jobs again", self.storage.url)
        self._storage_suspect = False
        return True

    def _claim(self) -> queue.Claim | None:
        free = self._free_devices()
        if not free or not self._space_left() or not self._storage_ok():
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
                    self._storage_suspect = True
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
