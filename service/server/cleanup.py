"""Files nobody will read again: temporary files of uploads and scoring that a killed process left behind, and
the checkpoints of jobs that ended.

A temporary file is removed once it is older than `temp_max_age_s` (its modification time: an upload in progress
keeps touching its file, so only abandoned ones age). A job's checkpoints are removed once it has ended
(succeeded, failed or cancelled) for `checkpoint_keep_s`; checkpoint folders of jobs that no longer exist go at
once. With a bucket, objects of data sets and models that have no row any more (their delete committed while the
bucket was away) are removed once every object of the id is older than `temp_max_age_s`. The API runs one sweep at
startup and then one every `sweep_every_s` in its reaper thread; a worker sweeps its own host's tmp/ and
checkpoints/ (`sweep_host`).
"""

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.server.db import utcnow
from service.server.storage import Storage
from service.server.tables import TERMINAL_STATUSES, Dataset, Job, JobStatus, Model

log = logging.getLogger("mlps.cleanup")

@dataclass
class Swept:
    temp_files: int = 0
    checkpoint_dirs: int = 0
    bytes_freed: int = 0
    orphans: int = 0


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> int:
    """Remove a file or folder; the bytes it held (0 if it was already gone)."""
    try:
        size = _size(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return size
    except FileNotFoundError:
        return 0


def sweep_temp(storage: Storage, *, max_age_s: float, now: float | None = None) -> Swept:
    """Remove entries of tmp/ not modified for max_age_s."""
    swept = Swept()
    now = time.time() if now is None else now
    if not storage.tmp_dir.is_dir():
        return swept
    for entry in storage.tmp_dir.iterdir():
        try:
            if now - entry.stat().st_mtime < max_age_s:
                continue
        except FileNotFoundError:
            continue
        swept.bytes_freed += _remove(entry)
        swept.temp_files += 1
    return swept


def sweep_checkpoints(*, session: Session, storage: Storage, keep_s: float) -> Swept:
    """Remove the checkpoints of jobs that ended keep_s ago or more, and of jobs that no longer exist (in the
    bucket too, when the storage is one)."""
    swept = Swept()
    folders = storage.checkpoint_jobs()
    if not folders:
        return swept
    known = set(session.scalars(select(Job.id).where(Job.id.in_(folders))))
    cutoff = utcnow() - timedelta(seconds=keep_s)
    ended_long_ago = set(session.scalars(select(Job.id).where(Job.id.in_(folders), Job.status.in_(TERMINAL_STATUSES),
                                                              Job.finished_at <= cutoff)))
    for name in folders:
        if name not in known or name in ended_long_ago:
            swept.bytes_freed += storage.remove_checkpoints(name)
            swept.checkpoint_dirs += 1
    return swept


def sweep_orphans(*, session: Session, storage: Storage, max_age_s: float, now: float | None = None) -> Swept:
    """Remove the bucket objects of data sets and models that have no row, once all of an id's objects are older
    than max_age_s (an upload in flight has its row only once it is done). Nothing to do with a local directory."""
    swept = Swept()
    stored = storage.stored_ids(older_than_s=max_age_s, now=now)
    if not stored:
        return swept
    ids = list(stored)
    known = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(ids))))
    known |= set(session.scalars(select(Model.id).where(Model.id.in_(ids))))
    for id_, keys in stored.items():
        if id_ not in known:
            storage.remove_objects(keys)
            swept.orphans += 1
    return swept


def sweep_host(*, session: Session, storage: Storage, running_here: set[str], max_age_s: float,
               now: float | None = None) -> Swept:
    """A worker host's own leftovers: tmp/ entries older than max_age_s, and local checkpoint folders untouched
    that long of jobs that run neither on this worker nor anywhere else (per the database), which the bucket holds
    for a later attempt. Only this host's disk: the bucket's checkpoints are the API's to sweep."""
    swept = sweep_temp(storage, max_age_s=max_age_s, now=now)
    now = time.time() if now is None else now
    local = storage.root / "checkpoints"
    if storage.bucket is None or not local.is_dir():
        return swept  # with a local directory, checkpoints/ is the store itself: sweep_checkpoints' to sweep
    folders = {p.name: p for p in local.iterdir() if p.is_dir() and p.name not in running_here}
    if not folders:
        return swept
    running = set(session.scalars(select(Job.id).where(Job.id.in_(list(folders)), Job.status == JobStatus.RUNNING)))
    for name, path in folders.items():
        try:
            if name in running or now - path.stat().st_mtime < max_age_s:
                continue
        except FileNotFoundError:
            continue
        swept.bytes_freed += _remove(path)
        swept.checkpoint_dirs += 1
    return swept


def sweep(*, session: Session, storage: Storage, temp_max_age_s: float, checkpoint_keep_s: float) -> Swept:
    """Every sweep of the API; one log line when anything went."""
    temp = sweep_temp(storage, max_age_s=temp_max_age_s)
    ckpt = sweep_checkpoints(session=session, storage=storage, keep_s=checkpoint_keep_s)
    orphans = sweep_orphans(session=session, storage=storage, max_age_s=temp_max_age_s)
    total = Swept(temp.temp_files, ckpt.checkpoint_dirs, temp.bytes_freed + ckpt.bytes_freed, orphans.orphans)
    if total.temp_files or total.checkpoint_dirs or total.orphans:
        log.info("removed %d temporary file(s), %d checkpoint folder(s) (%.1f MB) and the objects of %d deleted "
                 "data set(s) or model(s)", total.temp_files, total.checkpoint_dirs, total.bytes_freed / 1e6,
                 total.orphans)
    return total
