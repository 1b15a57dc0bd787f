"""Files nobody will read again: temporary files of uploads and scoring that a killed process left behind, and
the checkpoints of jobs that ended.

A temporary file is removed once it is older than `temp_max_age_s` (its modification time: an upload in progress
keeps touching its file, so only abandoned ones age). A job's checkpoints are removed once it has ended
(succeeded, failed or cancelled) for `checkpoint_keep_s`; checkpoint folders of jobs that no longer exist go at
once. The API runs one sweep at startup and then one every `sweep_every_s` in its reaper thread.
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
from service.server.tables import TERMINAL_STATUSES, Job

log = logging.getLogger("mlps.cleanup")

@dataclass
class Swept:
    temp_files: int = 0
    checkpoint_dirs: int = 0
    bytes_freed: int = 0


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
    """Remove the checkpoint folders of jobs that ended keep_s ago or more, and of jobs that no longer exist."""
    swept = Swept()
    root = storage.root / "checkpoints"
    if not root.is_dir():
        return swept
    folders = {p.name: p for p in root.iterdir() if p.is_dir()}
    if not folders:
        return swept
    known = set(session.scalars(select(Job.id).where(Job.id.in_(folders))))
    cutoff = utcnow() - timedelta(seconds=keep_s)
    ended_long_ago = set(session.scalars(select(Job.id).where(Job.id.in_(folders), Job.status.in_(TERMINAL_STATUSES),
                                                              Job.finished_at <= cutoff)))
    for name, folder in folders.items():
        if name not in known or name in ended_long_ago:
            swept.bytes_freed += _remove(folder)
            swept.checkpoint_dirs += 1
    return swept


def sweep(*, session: Session, storage: Storage, temp_max_age_s: float, checkpoint_keep_s: float) -> Swept:
    """Both sweeps; one log line when anything went."""
    temp = sweep_temp(storage, max_age_s=temp_max_age_s)
    ckpt = sweep_checkpoints(session=session, storage=storage, keep_s=checkpoint_keep_s)
    total = Swept(temp.temp_files, ckpt.checkpoint_dirs, temp.bytes_freed + ckpt.bytes_freed)
    if total.temp_files or total.checkpoint_dirs:
        log.info("removed %d temporary file(s) and %d checkpoint folder(s) (%.1f MB)", total.temp_files,
                 total.checkpoint_dirs, total.bytes_freed / 1e6)
    return total
