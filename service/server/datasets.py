"""Data sets: create from an upload, look up, list, preview, delete."""

import logging
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.server.auth import Principal, can_see, visible
from service.server.errors import Conflict, InvalidInput, NotFound
from service.server.queue import new_id
from service.server.storage import Storage, publish
from service.server.tables import Dataset, Job, JobStatus
from service.training import ingest

log = logging.getLogger("mlps.datasets")


def clean_name(name: str | None, fallback: str) -> str:
    """A display name: the base name of what the client sent, never used as a path."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    return (base or fallback)[:255]


def create(*, session: Session, storage: Storage, upload_path: Path, name: str, size_bytes: int, sha256: str,
           owner: str, max_columns: int, max_rows: int, max_array_bytes: int,
           cancelled: Callable[[], bool] | None = None) -> Dataset:
    """Parse the uploaded file; store it as Parquet and register it. A bad file leaves nothing behind."""
    dataset_id = new_id("ds")
    staged = storage.temp_path(".parquet")
    try:
        try:
            result = ingest.ingest(upload_path, staged, max_columns=max_columns, max_rows=max_rows,
                                   max_array_bytes=max_array_bytes, cancelled=cancelled)
        except ingest.DataError as exc:
            errors = [{"column": exc.column, "message": str(exc)}] if exc.column else [
                {"field": "file", "message": str(exc)}]
            raise InvalidInput(str(exc), errors=errors) from None
        written = staged.with_suffix(".npz") if result.format == "npz" else staged
        dest = storage.dataset_file(dataset_id, result.format)
        publish(written, dest)
    finally:
        staged.unlink(missing_ok=True)
        staged.with_suffix(".npz").unlink(missing_ok=True)
    dataset = Dataset(id=dataset_id, owner=owner, name=name, format=result.format, n_rows=result.n_rows,
                      n_columns=len(result.columns), columns=result.columns, size_bytes=size_bytes, sha256=sha256)
    session.add(dataset)
    session.info.setdefault("on_rollback", []).append(lambda: dest.unlink(missing_ok=True))
    session.flush()
    log.info("data set %s stored: %s, %d rows, %d columns", dataset_id, result.format, result.n_rows,
             len(result.columns))
    return dataset


def get(*, session: Session, dataset_id: str, principal: Principal) -> Dataset:
    """The data set with this id, or NotFound (also when it belongs to another owner)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or not can_see(principal, dataset.owner):
        raise NotFound(f"no data set with id '{dataset_id}'; GET /datasets lists them",
                       errors=[{"field": "dataset_id", "message": "unknown data set"}])
    return dataset


def list_(*, session: Session, principal: Principal, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """A page of the caller's data sets (every one for an admin), newest first, and the total count."""
    query = visible(select(Dataset), Dataset, principal)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), int(total or 0)


def delete(*, session: Session, storage: Storage, dataset: Dataset) -> None:
    """Delete a data set no queued or running job needs; its file goes once the transaction commits."""
    busy = session.scalars(select(Job.id).where(Job.dataset_id == dataset.id,
                                                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
    if busy:
        raise Conflict(f"data set '{dataset.id}' is used by queued or running job(s) {', '.join(busy)}; "
                       "cancel them or wait until they finish")
    session.delete(dataset)
    session.flush()
    dataset_id = dataset.id
    session.info.setdefault("on_commit", []).append(lambda: storage.remove_dataset(dataset_id))
