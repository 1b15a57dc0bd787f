"""Jobs: validate a spec against its data set, submit, look up, list, and read metrics."""

import math
from collections import Counter
from typing import Any

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import queue
from service.auth import Principal, can_see, visible
from service.config import Settings
from service.devices import waiting_reason
from service.errors import InvalidInput, NotFound, TooManyRequests
from service.schemas import JobCreate, JobRead, Progress
from service.tables import Dataset, EpochMetric, Job, JobStatus
from service.training.data import infer_task
from service.training.nets import NetSpec, build_network, count_parameters

TASK_METRICS = {
    "classification": ["val_loss", "val_accuracy", "val_balanced_accuracy", "val_f1_macro", "val_auroc"],
    "regression": ["val_loss", "val_rmse", "val_mae", "val_r2"],
    "autoencoder": ["val_loss"],
}


def _column_error(column: str, message: str, field: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "column": column, "message": message}])


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "message": message}])


def resolve(spec: JobCreate, dataset: Dataset) -> tuple[list[str], list[str], str]:
    """Check the spec against the data set's columns and itself; return (targets, features, task)."""
    columns = {c["name"]: c for c in dataset.columns}
    available = ", ".join(f"'{c}'" for c in columns)
    model = spec.model.type
    targets = [spec.target] if isinstance(spec.target, str) else list(spec.target or [])
    if model == "autoencoder":
        if targets:
            raise _invalid("target", "an autoencoder learns without a target; leave target out (or null)")
        if spec.task not in ("auto", "autoencoder"):
            raise _invalid("task", f"an autoencoder has no {spec.task} task; leave task as 'auto'")
    elif not targets:
        raise _invalid("target", f"a {model} needs a target column to learn; available columns: {available}")
    for i, name in enumerate(targets):
        field = "target" if isinstance(spec.target, str) else f"target.{i}"
        if name not in columns:
            raise _column_error(name, f"target column '{name}' is not in data set '{dataset.id}'; "
                                f"available columns: {available}", field)
    if len(set(targets)) != len(targets):
        raise _invalid("target", "a target column is listed more than once")
    if spec.features is None:
        features = [c for c in columns if c not in targets]
    else:
        features = list(spec.features)
        for i, name in enumerate(features):
            if name not in columns:
                raise _column_error(name, f"feature column '{name}' is not in data set '{dataset.id}'; "
                                    f"available columns: {available}", f"features.{i}")
            if name in targets:
                raise _column_error(name, f"'{name}' is the target; it cannot also be a feature", f"features.{i}")
        dupes = sorted(f for f, n in Counter(features).items() if n > 1)
        if dupes:
            raise _column_error(dupes[0], f"feature '{dupes[0]}' is listed more than once", "features")
    if not features:
        raise _invalid("features", "the data set has no columns besides the target to learn from")
    if dataset.format == "npz" and features != ["X"]:
        raise _invalid("features", "an array data set (.npz) has one input, 'X'; leave features out")
    if dataset.format != "npz" and any(columns[f]["kind"] == "tensor" for f in features):
        raise _invalid("features", "array columns can only be used from an .npz data set")

    if model == "autoencoder":
        task = "autoencoder"
    elif len(targets) > 1:
        if spec.task == "classification":
            raise _invalid("task", "several targets are supported for regression only; give one target column")
        task = "regression"
    else:
        task = infer_task(columns[targets[0]]) if spec.task == "auto" else spec.task
    for name in targets:
        col = columns[name]
        if task == "regression" and col["kind"] != "numeric":
            raise _column_error(name, f"target '{name}' is {col['kind']}; regression needs a numeric target "
                                "(use task 'classification' or 'auto')", "task")
    for name in targets if task == "regression" else []:
        if columns[name]["n_unique"] < 2:
            raise _column_error(name, f"target '{name}' has {columns[name]['n_unique']} distinct value(s); "
                                "regression needs a target that varies", "target")
    if task == "classification" and columns[targets[0]]["n_unique"] < 2:
        raise _column_error(targets[0], f"target '{targets[0]}' has {columns[targets[0]]['n_unique']} distinct "
                            "value(s); classification needs at least two classes", "target")
    if model == "perceptron" and (task != "classification" or columns[targets[0]]["n_unique"] != 2):
        what = f"{columns[targets[0]]['n_unique']} classes" if task == "classification" else "a regression target"
        raise _invalid("model.type", f"the perceptron learns binary targets only; '{targets[0]}' has {what} "
                       "(use logistic_regression or mlp)")
    if spec.model.activation == "threshold" and model in ("mlp", "autoencoder"):
        raise _invalid("model.activation", "a threshold unit has zero gradient, so backpropagation cannot train "
                       "it; use sigmoid, tanh, relu, leaky_relu, gelu or linear (threshold is the perceptron's)")
    if spec.training.class_weights is not None and task != "classification":
        raise _invalid("training.class_weights", "class weights apply to classification only")
    if spec.training.validation_fraction + spec.training.test_fraction > 0.8:
        raise _invalid("training.test_fraction", "validation_fraction + test_fraction must leave at least 20% of "
                       "the rows for training")
    metric = spec.training.early_stopping_metric
    allowed = TASK_METRICS[task]
    if metric not in allowed:
        raise _invalid("training.early_stopping_metric",
                       f"early_stopping_metric '{metric}' is not computed for {task}; use one of {allowed}")
    return targets, features, task


def _width(column: dict[str, Any]) -> int:
    """Network inputs one column becomes: one-hot for categories, every element of an array column."""
    if column["kind"] == "categorical":
        return max(int(column["n_unique"]), 1)
    if column["kind"] == "tensor":
        return math.prod(column.get("shape") or [1])
    return 1


def estimate_parameters(spec: JobCreate, dataset: Dataset, targets: list[str], features: list[str],
                        task: str) -> int:
    """An upper bound of the network's size from the column summary (categories may be fewer after the split)."""
    columns = {c["name"]: c for c in dataset.columns}
    n_in = sum(_width(columns[f]) for f in features)
    if task == "autoencoder":
        n_out = n_in
    elif task == "classification":
        n_classes = int(columns[targets[0]]["n_unique"])
        n_out = 1 if n_classes <= 2 else n_classes
    else:
        n_out = len(targets)
    # The network the worker will build, on the meta device: shapes only, no memory, whatever its size.
    with torch.device("meta"):
        net = build_network(NetSpec.from_dict(spec.model.model_dump()), n_in, n_out)
    return count_parameters(net)


def check_limits(spec: JobCreate, settings: Settings) -> None:
    """The operator's ceilings (settings), tighter than the schema's absolute bounds."""
    model, training = spec.model, spec.training
    if model.type in ("mlp", "autoencoder"):
        if len(model.hidden_layers) > settings.max_layers:
            raise _invalid("model.hidden_layers", f"{len(model.hidden_layers)} hidden layers; this server accepts "
                           f"at most {settings.max_layers}")
        for i, width in enumerate(model.hidden_layers):
            if width > settings.max_layer_width:
                raise _invalid(f"model.hidden_layers.{i}", f"a layer of {width} units; this server accepts at most "
                               f"{settings.max_layer_width} per layer")
    if training.epochs > settings.max_epochs:
        raise _invalid("training.epochs", f"{training.epochs} epochs; this server accepts at most "
                       f"{settings.max_epochs}")
    if training.batch_size > settings.max_batch_size:
        raise _invalid("training.batch_size", f"batch size {training.batch_size}; this server accepts at most "
                       f"{settings.max_batch_size}")
    if spec.max_runtime_s is not None and spec.max_runtime_s > settings.max_runtime_s:
        raise _invalid("max_runtime_s", f"max_runtime_s {spec.max_runtime_s}; this server accepts at most "
                       f"{settings.max_runtime_s} s")


def submit(*, session: Session, spec: JobCreate, principal: Principal, settings: Settings) -> Job:
    """Validate against the data set and the server's limits, and enqueue for the caller's owner."""
    check_limits(spec, settings)
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None or not can_see(principal, dataset.owner):
        raise InvalidInput(f"no data set with id '{spec.dataset_id}'; upload one with POST /datasets",
                           errors=[{"field": "dataset_id", "message": "unknown data set"}])
    targets, features, task = resolve(spec, dataset)
    n_params = estimate_parameters(spec, dataset, targets, features, task)
    if n_params > settings.max_parameters:
        raise _invalid("model.hidden_layers", f"this network would have about {n_params:,} parameters for "
                       f"{len(features)} feature column(s); this server accepts at most "
                       f"{settings.max_parameters:,}: use fewer or narrower layers")
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.owner == principal.owner, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])))
    if active >= settings.max_active_jobs:
        raise TooManyRequests(f"{principal.owner} already has {active} queued or running jobs, the most this "
                              "server accepts; wait for some to finish or cancel them")
    stored: dict[str, Any] = spec.model_dump(mode="json")
    stored["features"] = features
    stored["targets"] = targets
    stored["task"] = task
    if stored["max_runtime_s"] is None:
        stored["max_runtime_s"] = settings.max_runtime_s
    return queue.enqueue(session=session, owner=principal.owner, dataset_id=dataset.id, spec=stored, task=task)


def get(*, session: Session, job_id: str, principal: Principal) -> Job:
    """The job with this id, or NotFound (also when it belongs to another owner)."""
    job = session.get(Job, job_id)
    if job is None or not can_see(principal, job.owner):
        raise NotFound(f"no job with id '{job_id}'; GET /jobs lists them")
    return job


def list_(*, session: Session, principal: Principal, status: JobStatus | None, dataset_id: str | None, limit: int,
          offset: int) -> tuple[list[Job], int]:
    """A page of the caller's jobs (every one for an admin), newest first, optionally filtered."""
    query = visible(select(Job), Job, principal)
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
