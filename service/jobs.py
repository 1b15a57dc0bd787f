"""Jobs: validate a spec against its data set, submit, look up, list, and read metrics."""

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import queue
from service.devices import waiting_reason
from service.errors import InvalidInput, NotFound
from service.schemas import JobCreate, JobRead, Progress
from service.tables import Dataset, EpochMetric, Job, JobStatus
from service.training.data import infer_task

TASK_METRICS = {"classification": ["val_loss", "val_accuracy"], "regression": ["val_loss", "val_rmse", "val_r2"]}


def _column_error(column: str, message: str, field: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "column": column, "message": message}])


def resolve(spec: JobCreate, dataset: Dataset) -> tuple[list[str], str]:
    """Check target and features against the data set's columns; return (features, task)."""
    columns = {c["name"]: c for c in dataset.columns}
    available = ", ".join(f"'{c}'" for c in columns)
    if spec.target not in columns:
        raise _column_error(spec.target, f"target column '{spec.target}' is not in data set '{dataset.id}'; "
                            f"available columns: {available}", "target")
    if spec.features is None:
        features = [c for c in columns if c != spec.target]
    else:
        features = list(spec.features)
        for i, name in enumerate(features):
            if name not in columns:
                raise _column_error(name, f"feature column '{name}' is not in data set '{dataset.id}'; "
                                    f"available columns: {available}", f"features.{i}")
            if name == spec.target:
                raise _column_error(name, f"'{name}' is the target; it cannot also be a feature", f"features.{i}")
        dupes = sorted({f for f in features if features.count(f) > 1})
        if dupes:
            raise _column_error(dupes[0], f"feature '{dupes[0]}' is listed more than once", "features")
    if not features:
        raise InvalidInput("the data set has no columns besides the target to learn from",
                           errors=[{"field": "features", "message": "no feature columns"}])
    target = columns[spec.target]
    task = infer_task(target) if spec.task == "auto" else spec.task
    if task == "regression" and target["kind"] != "numeric":
        raise _column_error(spec.target, f"target '{spec.target}' is {target['kind']}; regression needs a numeric "
                            "target (use task 'classification' or 'auto')", "task")
    if task == "classification" and target["n_unique"] < 2:
        raise _column_error(spec.target, f"target '{spec.target}' has {target['n_unique']} distinct value(s); "
                            "classification needs at least two classes", "target")
    metric = spec.training.early_stopping_metric
    allowed = TASK_METRICS[task]
    if metric not in allowed:
        raise InvalidInput(f"early_stopping_metric '{metric}' is not computed for {task}; use one of {allowed}",
                           errors=[{"field": "training.early_stopping_metric", "message": f"one of {allowed}"}])
    return features, task


def submit(*, session: Session, spec: JobCreate) -> Job:
    """Validate against the data set and enqueue."""
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None:
        raise InvalidInput(f"no data set with id '{spec.dataset_id}'; upload one with POST /datasets",
                           errors=[{"field": "dataset_id", "message": "unknown data set"}])
    features, task = resolve(spec, dataset)
    stored: dict[str, Any] = spec.model_dump(mode="json")
    stored["features"] = features
    stored["task"] = task
    return queue.enqueue(session=session, dataset_id=dataset.id, spec=stored, task=task)


def get(*, session: Session, job_id: str) -> Job:
    """The job with this id, or NotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id '{job_id}'; GET /jobs lists them")
    return job


def list_(*, session: Session, status: JobStatus | None, dataset_id: str | None, limit: int,
          offset: int) -> tuple[list[Job], int]:
    """A page of jobs, newest first, optionally filtered."""
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), int(total or 0)


def metrics(*, session: Session, job: Job) -> list[EpochMetric]:
    """Every epoch's metrics, in order."""
    return list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job.id)
                                .order_by(EpochMetric.epoch)).all())


def to_read(job: Job) -> JobRead:
    """The API view of a job: progress, waiting reason and duration included."""
    duration = None
    if job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    return JobRead(
        id=job.id, status=job.status, dataset_id=job.dataset_id, task=job.task, spec=job.spec,
        progress=Progress(epoch=job.epoch, epochs=job.epochs), latest_metrics=job.latest_metrics,
        device_request=job.device_request, device=job.device, attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        waiting_for=waiting_reason(job.device_request) if job.status == JobStatus.QUEUED else None,
        error=job.error, result=job.result, model_id=job.model_id, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, duration_s=duration,
    )
