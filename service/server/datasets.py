"""Data sets: create from an upload, look up, list, preview, delete."""

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.schemas import DatasetUpdate
from service.server.auth import Principal, can_see, visible
from service.server.errors import Conflict, InvalidInput, NotFound
from service.server.queue import new_id
from service.server.storage import Storage
from service.server.tables import Dataset, Job, JobStatus
from service.training import checks, ingest

log = logging.getLogger("mlps.datasets")


def clean_name(name: str | None, fallback: str, *, path: bool = False) -> str:
    """A display name, never used as a path: as given (trimmed, at most 255 characters), or for a file name
    (`path`) its base name only, so that 'C:\\data\\iris.csv' shows as 'iris.csv'."""
    text = (name or "").replace("\\", "/") if path else (name or "")
    base = (os.path.basename(text) if path else text).strip()
    return "".join(ch for ch in (base or fallback) if ch.isprintable())[:255] or fallback


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
        storage.publish_dataset(written, dataset_id, result.format)
    finally:
        staged.unlink(missing_ok=True)
        staged.with_suffix(".npz").unlink(missing_ok=True)
    dataset = Dataset(id=dataset_id, owner=owner, name=name, format=result.format, n_rows=result.n_rows,
                      n_columns=len(result.columns), columns=result.columns, size_bytes=size_bytes, sha256=sha256,
                      warnings=result.warnings, dialect=result.dialect)
    session.add(dataset)
    session.info.setdefault("on_rollback", []).append(lambda: storage.remove_dataset(dataset_id))
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


def with_kinds(*, storage: Storage, dataset: Dataset, kinds: Mapping[str, str], field: str) -> list[dict[str, Any]]:
    """The data set's column summaries with `kinds` set (InvalidInput naming the column and the kinds it could
    take); the stored data set is not changed."""
    by_name = {c["name"]: c for c in dataset.columns}
    unknown = [name for name in kinds if name not in by_name]
    if unknown:
        available = ", ".join(f"'{c}'" for c in by_name)
        raise InvalidInput(f"column '{unknown[0]}' is not in data set '{dataset.id}'; available columns: {available}",
                           errors=[{"field": f"{field}.{unknown[0]}", "column": unknown[0],
                                    "message": "unknown column"}])
    changed = dict(by_name)
    for name, kind in kinds.items():
        values = None
        if kind == "datetime" and dataset.format != "npz":
            values = pq.read_table(storage.dataset_file(dataset.id, dataset.format), columns=[name]).column(name)
        try:
            changed[name] = checks.set_kind(by_name[name], kind, values)
        except ingest.DataError as exc:
            raise InvalidInput(str(exc), errors=[{"field": f"{field}.{name}", "column": name,
                                                  "message": str(exc)}]) from None
    return [changed[c["name"]] for c in dataset.columns]


def update(*, session: Session, storage: Storage, dataset: Dataset, change: DatasetUpdate) -> Dataset:
    """PATCH: a new display name, or kinds set on columns (the data set's warnings follow the new kinds)."""
    if change.name is not None:
        dataset.name = clean_name(change.name, dataset.name)
    if change.column_kinds:
        columns = with_kinds(storage=storage, dataset=dataset, kinds=change.column_kinds, field="column_kinds")
        dataset.columns = columns
        kept = [w for w in dataset.warnings or [] if w.get("column") is None and w["code"] == "not_utf8"]
        dataset.warnings = kept + ingest.warnings(columns, dataset.n_rows)
    session.flush()
    return dataset


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
