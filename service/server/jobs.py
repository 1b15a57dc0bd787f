"""Jobs: validate a spec against its data set, submit, look up, list, and read metrics."""

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import ColumnElement, String, cast, func, select
from sqlalchemy.orm import Session

from service.schemas import (
    ComparedJob,
    JobComparison,
    JobCreate,
    JobRead,
    LabelsUpdate,
    MetricHistory,
    ModelSpec,
    Progress,
    SpecDifference,
)
from service.server import datasets, queue
from service.server.auth import Principal, can_see, visible
from service.server.config import Settings
from service.server.devices import waiting_reason
from service.server.errors import InvalidInput, NotFound, TooManyRequests
from service.server.spec import SPEC_VERSION, StoredSpec, ensemble_integer_levels, read_spec, required
from service.server.spec import resolve as resolve_spec
from service.server.storage import Storage
from service.server.tables import Dataset, EpochMetric, Job, JobStatus
from service.training import checks, dates
from service.training.features import CATEGORICAL_KINDS, summary_bins
from service.training.ingest import MAX_CATEGORY_LEVELS, DataError, infer_task
from service.training.tasks import metric_names, output_width, parameter_count


def _column_error(column: str, message: str, field: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "column": column, "message": message}])


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "message": message}])


def resolve(spec: JobCreate, dataset: Dataset,
            summaries: list[dict[str, Any]] | None = None) -> tuple[list[str], list[str], str]:
    """Check the spec against the data set's columns (`summaries`: with the job's kinds) and itself; return
    (targets, features, task)."""
    columns = {c["name"]: c for c in (summaries or dataset.columns)}
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
        if col["kind"] in ("datetime", "tensor"):
            raise _column_error(name, f"target '{name}' is a {col['kind']} column; a target is a class or a number "
                                "(set its kind with column_kinds if it is one)", "target")
        if task == "regression" and not (col["kind"] == "numeric" or (
                col["kind"] == "identifier" and col["dtype"].startswith(("int", "uint")))):
            raise _column_error(name, f"target '{name}' is {col['kind']}; regression needs a numeric target "
                                "(use task 'classification' or 'auto')", "task")
    for name in targets if task == "regression" else []:
        if columns[name]["n_unique"] < 2:
            raise _column_error(name, f"target '{name}' has {columns[name]['n_unique']} distinct value(s); "
                                "regression needs a target that varies", "target")
    if task == "classification" and columns[targets[0]]["n_unique"] < 2:
        raise _column_error(targets[0], f"target '{targets[0]}' has {columns[targets[0]]['n_unique']} distinct "
                            "value(s); classification needs at least two classes", "target")
    return targets, features, task


def check_spec(spec: StoredSpec, dataset: Dataset) -> None:
    """Rules between fields of the resolved spec (and the target's classes)."""
    columns = {c["name"]: c for c in dataset.columns}
    model, task, targets = spec.model, spec.task, spec.targets
    if model.type == "perceptron" and (task != "classification" or columns[targets[0]]["n_unique"] != 2):
        what = f"{columns[targets[0]]['n_unique']} classes" if task == "classification" else "a regression target"
        raise _invalid("model.type", f"the perceptron learns binary targets only; '{targets[0]}' has {what} "
                       "(use logistic_regression, mlp or ensemble)")
    if model.activation == "threshold" and model.type in ("mlp", "autoencoder", "ensemble"):
        raise _invalid("model.activation", "a threshold unit has zero gradient, so backpropagation cannot train "
                       "it; use sigmoid, tanh, relu, leaky_relu, gelu or linear (threshold is the perceptron's)")
    training = spec.training
    if training.class_weights is not None and task != "classification":
        raise _invalid("training.class_weights", "class weights apply to classification only")
    validation_fraction = required(training.validation_fraction, "training.validation_fraction")
    if validation_fraction + required(training.test_fraction, "training.test_fraction") > 0.8:
        raise _invalid("training.test_fraction", "validation_fraction + test_fraction must leave at least 20% of "
                       "the rows for training")
    metric = training.early_stopping_metric
    allowed = metric_names(task, split="val")
    if metric not in allowed:
        raise _invalid("training.early_stopping_metric",
                       f"early_stopping_metric '{metric}' is not computed for {task}; use one of {allowed}")
    if training.optimizer == "lbfgs" and model.type in ("perceptron", "ensemble"):
        raise _invalid("training.optimizer", f"lbfgs does not train a {model.type}; leave optimizer out")
    if model.type == "ensemble":
        _check_ensemble(spec, n_rows=dataset.n_rows)


def _check_ensemble(spec: StoredSpec, *, n_rows: int) -> None:
    model, training = spec.model, spec.training
    members, folds = required(model.members, "model.members"), required(model.folds, "model.folds")
    if model.batch_norm:
        raise _invalid("model.batch_norm", "the ensemble's members have no batch norm; leave batch_norm out or "
                       "use model type 'mlp'")
    if model.linear_members and not model.linear_skip:
        raise _invalid("model.linear_members", "linear members are the ensemble's linear skip path alone; set "
                       "linear_skip to true or leave linear_members out")
    if training.optimizer != "adamw":
        raise _invalid("training.optimizer", "the ensemble trains every member with AdamW at its own learning rate; "
                       "leave optimizer out (or 'adamw'), or use model type 'mlp'")
    if folds > n_rows:
        raise _invalid("model.folds", f"{folds} folds for {n_rows} rows; each fold needs at least one row to "
                       f"hold out: use at most {n_rows} folds")
    if members % folds:
        raise _invalid("model.members", f"members ({members}) must be a multiple of folds ({folds}): "
                       "each hyperparameter setting is trained once per fold")
    if training.lr_schedule is not None:
        raise _invalid("training.lr_schedule", "the ensemble's members keep their own constant learning rates; "
                       "leave lr_schedule out or use model type 'mlp'")
    if training.early_stopping_metric != "val_loss":
        raise _invalid("training.early_stopping_metric", "each ensemble member stops on its own held-out loss; "
                       "leave early_stopping_metric out (val_loss)")
    learning_rate_range = required(training.learning_rate_range, "training.learning_rate_range")
    weight_decay_range = required(training.weight_decay_range, "training.weight_decay_range")
    for name, (lo, hi) in (("learning_rate_range", learning_rate_range), ("weight_decay_range", weight_decay_range)):
        if lo > hi:
            raise _invalid(f"training.{name}", f"{name} is [low, high]; got [{lo}, {hi}]")
    lo, hi = required(model.dropout_range, "model.dropout_range")
    if not lo <= hi < 1:
        raise _invalid("model.dropout_range", f"dropout_range is [low, high] with high below 1; got [{lo}, {hi}]")
    if learning_rate_range[0] <= 0:
        raise _invalid("training.learning_rate_range", "learning rates must be above 0")
    if folds > 1 and required(training.validation_fraction, "training.validation_fraction") > 0:
        raise _invalid("training.validation_fraction", "a cross-fitted ensemble validates every member on its own "
                       "fold; leave validation_fraction out, or set model.folds to 1 to use a shared split")


def _width(column: dict[str, Any], model: ModelSpec, integer_levels: int = 0) -> int:
    """Network inputs one column becomes (at most): one-hot for categories, every element of an array column;
    for the ensemble, a numeric column's bins (a whole-number column's may be one per level, up to
    `integer_levels`) and missing-value input too."""
    if column["kind"] in CATEGORICAL_KINDS:
        return max(min(int(column["n_unique"]), MAX_CATEGORY_LEVELS), 1)
    if column["kind"] == "datetime":
        return len(dates.inputs(list(dates.PARTS))) + 1
    if column["kind"] == "tensor":
        return math.prod(column.get("shape") or [1])
    if model.type == "ensemble" and column["kind"] == "numeric":
        return 1 + summary_bins(column, model.bins or 0, integer_levels) + bool(column.get("n_missing", 0) > 0)
    return 1


def estimate_parameters(spec: StoredSpec, dataset: Dataset) -> int:
    """An upper bound of the network's size from the column summary (categories may be fewer after the split)."""
    columns = {c["name"]: c for c in dataset.columns}
    n_numeric = sum(spec.column_kinds.get(f) == "numeric" for f in spec.features)
    levels = ensemble_integer_levels(n_numeric) if n_numeric else 0
    n_in = sum(_width(columns[f], spec.model, levels) for f in spec.features)
    n_classes = int(columns[spec.targets[0]]["n_unique"]) if spec.task == "classification" else 0
    n_out = output_width(spec.task, n_inputs=n_in, n_classes=n_classes, n_targets=len(spec.targets))
    # Counted from the spec (the network the worker will build has exactly these): the API never loads torch.
    return parameter_count(spec.model, n_in, n_out)


def check_limits(spec: StoredSpec, settings: Settings) -> None:
    """The operator's ceilings (settings), tighter than the schema's absolute bounds."""
    model, training = spec.model, spec.training
    if model.type in ("mlp", "autoencoder", "ensemble"):
        hidden_layers = required(model.hidden_layers, "model.hidden_layers")
        if len(hidden_layers) > settings.max_layers:
            raise _invalid("model.hidden_layers", f"{len(hidden_layers)} hidden layers; this server accepts "
                           f"at most {settings.max_layers}")
        for i, width in enumerate(hidden_layers):
            if width > settings.max_layer_width:
                raise _invalid(f"model.hidden_layers.{i}", f"a layer of {width} units; this server accepts at most "
                               f"{settings.max_layer_width} per layer")
    epochs = required(training.epochs, "training.epochs")
    if epochs > settings.max_epochs:
        raise _invalid("training.epochs", f"{epochs} epochs; this server accepts at most {settings.max_epochs}")
    batch_size = required(training.batch_size, "training.batch_size")
    if batch_size > settings.max_batch_size:
        raise _invalid("training.batch_size", f"batch size {batch_size}; this server accepts at most "
                       f"{settings.max_batch_size}")
    if spec.max_runtime_s is not None and spec.max_runtime_s > settings.max_runtime_s:
        raise _invalid("max_runtime_s", f"max_runtime_s {spec.max_runtime_s}; this server accepts at most "
                       f"{settings.max_runtime_s} s")


def submit(*, session: Session, spec: JobCreate, principal: Principal, settings: Settings) -> Job:
    """Validate against the data set and the server's limits, and enqueue for the caller's owner."""
    dataset, stored, found = check_with_warnings(session=session, spec=spec, principal=principal, settings=settings)
    active = active_jobs(session=session, owner=principal.owner)
    if active >= settings.max_active_jobs:
        raise TooManyRequests(f"{principal.owner} already has {active} queued or running jobs, the most this "
                              "server accepts; wait for some to finish or cancel them")
    job = queue.enqueue(session=session, owner=principal.owner, dataset_id=dataset.id, spec=stored)
    job.warnings = found
    session.flush()
    return job


def active_jobs(*, session: Session, owner: str) -> int:
    """The owner's queued and running jobs (what max_active_jobs bounds)."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.owner == owner, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))) or 0


def check(*, session: Session, spec: JobCreate, principal: Principal, settings: Settings) -> tuple[Dataset, StoredSpec]:
    """Everything submit checks but the active-job limit: (the data set, the resolved spec)."""
    dataset, stored, _ = check_with_warnings(session=session, spec=spec, principal=principal, settings=settings,
                                             leaks=False)
    return dataset, stored


def check_with_warnings(*, session: Session, spec: JobCreate, principal: Principal, settings: Settings,
                        leaks: bool = True) -> tuple[Dataset, StoredSpec, list[dict[str, Any]]]:
    """`check`, and what the job should be warned about (columns left out, its target, and with `leaks` the
    features that give the target away: the one check that reads many columns, left out where only the errors
    count, as when a search checks each value of its space)."""
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None or not can_see(principal, dataset.owner):
        raise NotFound(f"no data set with id '{spec.dataset_id}'; upload one with POST /datasets",
                       errors=[{"field": "dataset_id", "message": "unknown data set"}])
    storage = Storage.from_settings(settings)
    summaries = dataset.columns
    if spec.column_kinds:
        summaries = datasets.with_kinds(storage=storage, dataset=dataset, kinds=spec.column_kinds,
                                        field="column_kinds")
    targets, features, task = resolve(spec, dataset, summaries)
    features, found = checks.left_out(summaries, features, dataset.n_rows, listed=spec.features is not None)
    if not features:
        reasons = "; ".join(w["message"] for w in found[:5])
        raise _invalid("features", f"no column is left to learn from: {reasons}")
    columns = {c["name"]: c for c in summaries}
    kinds = {f: columns[f]["kind"] for f in features} if dataset.format != "npz" else {}
    layouts = {f: columns[f]["datetime_layout"] for f in features if kinds.get(f) == "datetime"}
    stored = resolve_spec(spec, targets=targets, features=features, task=task, n_rows=dataset.n_rows,
                          max_runtime_s=settings.max_runtime_s,
                          n_numeric=sum(columns[f]["kind"] == "numeric" for f in features),
                          column_kinds=kinds, date_layouts=layouts)
    check_spec(stored, dataset)
    check_limits(stored, settings)
    n_params = estimate_parameters(stored, dataset)
    if n_params > settings.max_parameters:
        raise _invalid("model.hidden_layers", f"this network would have about {n_params:,} parameters for "
                       f"{len(features)} feature column(s); this server accepts at most "
                       f"{settings.max_parameters:,}: use fewer or narrower layers"
                       + (" or fewer members" if stored.model.type == "ensemble" else ""))
    if dataset.format != "npz" and task in ("classification", "regression"):
        found += _data_checks(storage.dataset_file(dataset.id, dataset.format), stored, leaks=leaks)
    return dataset, stored, found


def _holdout(spec: StoredSpec) -> float:
    """The smallest share of a class's rows a split holds out: a fold's, the validation split's or the test's."""
    folds = spec.model.folds or 1
    shares = [1 / folds] if spec.model.type == "ensemble" and folds > 1 else []
    shares += [f for f in (spec.training.validation_fraction, spec.training.test_fraction) if f]
    return min(shares, default=0.0)


def _data_checks(path: Path, spec: StoredSpec, *, leaks: bool = True) -> list[dict[str, Any]]:
    """The checks that read the data: the target's rows and classes (every row), leaking features (the first
    rows); a target that cannot train is InvalidInput naming it."""
    target = spec.targets[0]
    found: list[dict[str, Any]] = []
    try:
        for name in spec.targets:
            found += checks.target_checks(pq.read_table(path, columns=[name]).column(name), name, spec.task,
                                          holdout=_holdout(spec))
    except DataError as exc:
        raise _column_error(exc.column or target, str(exc), "target") from None
    if not leaks:
        return found
    features = spec.features[:checks.LEAK_COLUMNS]
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=checks.LEAK_ROWS, columns=[*features, target]))
    return found + checks.leaks(pa.Table.from_batches([batch]), target, features, spec.task)


def get(*, session: Session, job_id: str, principal: Principal) -> Job:
    """The job with this id, or NotFound (also when it belongs to another owner)."""
    job = session.get(Job, job_id)
    if job is None or not can_see(principal, job.owner):
        raise NotFound(f"no job with id '{job_id}'; GET /jobs lists them",
                       errors=[{"field": "job_id", "message": "unknown job"}])
    return job


def list_(*, session: Session, principal: Principal, status: JobStatus | None, dataset_id: str | None, limit: int,
          offset: int, tag: str | None = None, name: str | None = None,
          search_id: str | None = None) -> tuple[list[Job], int]:
    """A page of the caller's jobs (every one for an admin), newest first, optionally filtered."""
    query = visible(select(Job), Job, principal)
    if status is not None:
        query = query.where(Job.status == status)
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    if tag is not None:
        query = query.where(has_tag(Job.tags, tag))
    if name is not None:
        query = query.where(Job.name == name)
    if search_id is not None:
        query = query.where(Job.search_id == search_id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), int(total or 0)


def has_tag(column: Any, tag: str) -> ColumnElement[bool]:
    """Rows whose JSON list of tags holds `tag` (the list's text holds it quoted; tags have no quotes)."""
    return cast(column, String).contains(json.dumps(tag), autoescape=True)


def update_labels(*, session: Session, job: Job, labels: LabelsUpdate) -> Job:
    """PATCH a job's name, tags or notes: the fields given replace the stored ones."""
    for field in labels.model_fields_set:
        setattr(job, field, getattr(labels, field) if field != "tags" else list(labels.tags or []))
    session.flush()
    return job


MAX_COMPARED = 20


def compare(*, session: Session, principal: Principal, ids: list[str]) -> JobComparison:
    """Jobs side by side: per-epoch metrics aligned on the epoch, final figures, and where the specs differ."""
    if not 2 <= len(ids) <= MAX_COMPARED or len(set(ids)) != len(ids):
        raise _invalid("ids", f"give 2 to {MAX_COMPARED} different job ids, comma-separated; got {len(ids)}"
                       + (" with repeats" if len(set(ids)) != len(ids) else ""))
    found = [get(session=session, job_id=job_id, principal=principal) for job_id in ids]
    rows: dict[str, dict[int, dict[str, Any]]] = {j.id: {} for j in found}
    for job_id, epoch, figures in session.execute(
            select(EpochMetric.job_id, EpochMetric.epoch, EpochMetric.metrics).where(EpochMetric.job_id.in_(ids))):
        rows[job_id][epoch] = epoch_figures(figures)
    epochs = sorted({e for per_job in rows.values() for e in per_job})
    names = sorted({k for per_job in rows.values() for m in per_job.values() for k, v in m.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"})
    histories = [MetricHistory(metric=name, epochs=epochs,
                               values={j: [rows[j].get(e, {}).get(name) for e in epochs] for j in ids})
                 for name in names]
    flat = {j.id: _flatten(_current_spec(j.spec)) for j in found}
    fields = sorted({f for spec in flat.values() for f in spec})
    differences = [SpecDifference(field=f, values={j: flat[j].get(f) for j in ids}) for f in fields
                   if len({json.dumps(flat[j].get(f), sort_keys=True) for j in ids}) > 1]
    compared = [ComparedJob(id=j.id, name=j.name, status=j.status, search_id=j.search_id, epochs_run=j.epoch,
                            metrics=((j.result or {}).get("metrics") if j.status == JobStatus.SUCCEEDED
                                     else epoch_figures(j.latest_metrics) if j.latest_metrics else None))
                for j in found]
    return JobComparison(jobs=compared, histories=histories, differences=differences)


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"type": "mlp"}} -> {"model.type": "mlp"}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat |= _flatten(item, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def metrics(*, session: Session, job: Job) -> list[EpochMetric]:
    """Every epoch's metrics, in order."""
    return list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job.id)
                                .order_by(EpochMetric.epoch)).all())


def epoch_figures(metrics: dict[str, Any], *, members: bool = False) -> dict[str, Any]:
    """One epoch's row as shown: the ensemble's figures, and each member's own only when asked."""
    return metrics if members else {k: v for k, v in metrics.items() if not k.startswith("member_")}


def _current_spec(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored spec in today's shape: as stored when it is (no re-validation per listed job), else upgraded."""
    return stored if stored.get("schema_version") == SPEC_VERSION else read_spec(stored).to_json()


def to_read(job: Job) -> JobRead:
    """The API view of a job: progress, waiting reason and duration included."""
    duration = None
    if job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    return JobRead(
        id=job.id, status=job.status, dataset_id=job.dataset_id, task=job.task, spec=_current_spec(job.spec),
        progress=Progress.of(job.epoch, job.epochs, job.step_progress),
        latest_metrics=epoch_figures(job.latest_metrics) if job.latest_metrics else None,
        device_request=job.device_request, device=job.device, attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        waiting_for=waiting_reason(job.device_request) if job.status == JobStatus.QUEUED else None,
        # the report (curves, prediction samples) is served by GET /jobs/{id}/metrics only: it would make every
        # job in a list and every status event tens of kB
        error=job.error, warnings=list(job.warnings or []),
        result={k: v for k, v in job.result.items() if k != "report"} if job.result else job.result,
        model_id=job.model_id,
        metrics=(job.result or {}).get("metrics") if job.status == JobStatus.SUCCEEDED else None,
        created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, duration_s=duration,
        search_id=job.search_id, name=job.name, tags=list(job.tags or []), notes=job.notes,
    )
