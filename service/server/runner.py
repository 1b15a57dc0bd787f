"""One job, run inside its own child process: load data, train, store the model, report through the queue."""

import contextlib
import logging
import os
import select
import threading
import time
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from service.server import faults, queue
from service.server.config import Settings
from service.server.db import make_engine, make_sessionmaker, session_scope
from service.server.devices import CpuLoad, cpu_budget
from service.server.logs import configure as configure_logging
from service.server.logs import job_id_var
from service.server.spec import StoredSpec, ensemble_integer_levels, read_spec, required
from service.server.storage import Storage, StorageRefused, StorageUnavailable
from service.server.tables import Dataset, Job, Model
from service.training import ingest, streaming
from service.training.artifact import ModelMeta, load_checkpoint, save_checkpoint, save_model
from service.training.ensemble import EnsembleConfig, EnsembleState, train_ensemble
from service.training.features import Encoding, load_columns
from service.training.loop import (
    EpochHook,
    EpochReport,
    StepHook,
    StepReport,
    TrainConfig,
    TrainingError,
    TrainResult,
    TrainState,
    flush_denormals_for_good,
    train,
)
from service.training.nets import NetSpec, count_parameters
from service.training.perceptron import train_perceptron
from service.training.pipeline import Prepared, SplitSpec, final_report, prepare, prepare_arrays

log = logging.getLogger("mlps.runner")

# The snapshot a job resumes from: the ensemble's or a single network's, as its checkpoint's kind says.
Resume = TrainState | EnsembleState


def _feature_schema(preprocessing: dict[str, Any]) -> list[dict[str, Any]]:
    if preprocessing.get("kind") == "array":
        return [{"name": "X", "kind": "tensor", "shape": preprocessing["shape"]}]
    out = []
    for f in preprocessing["features"]:
        item: dict[str, Any] = {"name": f["name"], "kind": f["kind"]}
        if f["kind"] == "categorical":
            item["categories"] = f["categories"]
        elif f["kind"] == "datetime":
            item["layout"] = f["layout"]
        out.append(item)
    return out


def run_job(settings_json: str, job_id: str, token: str, device: str, device_description: str,
            worker_pid: int, jobs_on_device: int = 1) -> None:
    """Entry point of the child process (`jobs_on_device`: the worker's jobs on this device, this one included).
    Every write is guarded by the lease token."""
    flush_denormals_for_good()
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_format)
    job_id_var.set(job_id)
    _exit_with_worker(worker_pid)
    log.info("job %s: training process %d started on %s", job_id, os.getpid(), device_description)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    storage = Storage.from_settings(settings)
    try:
        _run(settings, sessions, storage, job_id, token, device, device_description, jobs_on_device)
    except queue.LeaseLost:
        log.warning("job %s: lease lost; another attempt owns it now, stopping", job_id)
    except Exception as exc:
        if faults.database_unavailable(exc):
            log.warning("job %s: the database failed under it (%s); handing it back to resume from its last "
                        "checkpoint", job_id, exc)
            raise SystemExit(faults.HAND_BACK_EXIT) from None
        if isinstance(exc, StorageUnavailable):
            log.warning("job %s: %s; handing it back to resume from its last checkpoint", job_id, exc)
            raise SystemExit(faults.HAND_BACK_EXIT) from None
        if isinstance(exc, StorageRefused):  # asking again would be refused again: the job fails, saying why
            log.warning("job %s: %s", job_id, exc)
            with contextlib.suppress(queue.LeaseLost):
                _fail(sessions, job_id, token, str(exc))
            return
        log.exception("job %s: unexpected error", job_id)
        with contextlib.suppress(queue.LeaseLost):
            _fail(sessions, job_id, token, f"internal error while training ({type(exc).__name__}: {exc}); "
                                            "the worker's log has the details")
    finally:
        engine.dispose()


def _exit_with_worker(worker_pid: int) -> None:
    """Stop this process the moment its worker dies (even by kill -9), so a lost worker leaves no training
    behind that could keep renewing the lease. Our parent is the fork server, not the worker, so we watch
    the worker's pid; a zombie counts as dead."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(worker_pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                try:
                    os.kill(worker_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(1.0)
        log.error("worker %d is gone; stopping this training process", worker_pid)
        os._exit(70)

    threading.Thread(target=watch, name="mlps-worker-watch", daemon=True).start()


# Weights × batch size (a minibatch step's work, about a sixth of its FLOP) below which one thread beats a thread
# pool: each matrix product is too small to split, and every parallel region waits for its slowest thread, which
# on a busy machine may not be scheduled at all for a while (measured: 20× slower steps with 2 threads on 2 shared
# cores). The whole job's size does not matter; only how much one step can share out.
SMALL_STEP_WORK = 16_000_000
# How often a training job looks at the machine's load again (at an epoch's end, or between a long epoch's steps).
RETHREAD_S = 10.0


def thread_count(*, configured: int, work: int, cpus: int, jobs: int, busy_elsewhere: float | None) -> int:
    """Threads for one job: `configured` (MLPS_TORCH_THREADS) when set; else 1 for small steps (a pool costs more
    than it saves there); else the `cpus` this process may use (affinity mask, cgroup quota) shared among the
    `jobs` running on this worker's CPU, and never more than the CPUs that other work (`busy_elsewhere`, other
    jobs included) leaves idle: a thread that waits for a core slows every parallel region of the step."""
    if configured:
        return configured
    if work < SMALL_STEP_WORK:
        return 1
    share = max(1, cpus // max(jobs, 1))
    if busy_elsewhere is not None:
        share = min(share, max(1, round(cpus - busy_elsewhere)))
    return share


class Threads:
    """The job's torch thread count: chosen once its data is loaded, and chosen again every RETHREAD_S while it
    trains, as other work on the machine comes and goes. The fork server warmed up on one thread (see
    service.server.preload)."""

    def __init__(self, configured: int, jobs: int) -> None:
        self.configured, self.jobs = configured, jobs
        self.load = CpuLoad()
        self.cpus = cpu_budget()
        self.work = 0
        self.count = 0
        self.checked = 0.0
        self.counts: list[int] = []  # every count the job used, in order

    def start(self, work: int) -> int:
        self.work = work
        self._set()
        return self.count

    def adjust(self) -> None:
        """Choose again if RETHREAD_S has passed (reading the load costs a few microseconds; nothing waits)."""
        if self.configured or self.work < SMALL_STEP_WORK or time.monotonic() - self.checked < RETHREAD_S:
            return
        self._set(min_interval_s=0.0)

    def _set(self, min_interval_s: float = 0.2) -> None:
        busy = None if self.configured or self.work < SMALL_STEP_WORK else \
            self.load.busy_elsewhere(min_interval_s)
        count = thread_count(configured=self.configured, work=self.work, cpus=self.cpus, jobs=self.jobs,
                             busy_elsewhere=busy)
        self.checked = time.monotonic()
        if count != self.count:
            torch.set_num_threads(count)
            if self.count:
                log.info("threads %d → %d (%.1f of %d CPUs busy with other work)", self.count, count, busy or 0.0,
                         self.cpus)
            self.count = count
            self.counts.append(count)


def _fail(sessions: sessionmaker[Session], job_id: str, token: str, message: str) -> None:
    with session_scope(sessions) as s:
        queue.fail(session=s, job_id=job_id, token=token, error=message)


class Progress:
    """Epoch metrics and checkpoints on their way to the database, written together in one guarded
    transaction at most every `progress_flush_s` (and at the end), so that tiny epochs do not each pay
    for a commit and a checkpoint, and a resumed attempt never finds rows past its checkpoint."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], job_id: str, token: str,
                 storage: Storage) -> None:
        self.settings, self.sessions, self.job_id, self.token = settings, sessions, job_id, token
        self.storage, self.folder = storage, storage.checkpoint_dir(job_id)
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self.pending: dict[str, Any] | None = None
        self.last_flush = time.monotonic()
        self.cancel = False

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.settings.progress_flush_s

    def checkpoint(self, state: Resume, history: list[dict[str, Any]], kind: str) -> None:
        """Write the files now; the database points at them when the epoch's metrics are flushed."""
        name = f"{self.token[:8]}-{state.epoch}"
        save_checkpoint(self.folder, name, state, {"history": history, "kind": kind})
        self.storage.push_checkpoint(self.job_id, name)  # in the bucket before the database points at it
        self.pending = {"epoch": state.epoch, "file": name}

    def add(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Queue one epoch's metrics; flush when a checkpoint waits or time is up. Returns cancel requested."""
        self.rows.append((epoch, metrics))
        if self.pending is not None or self.due():
            self.flush()
        return self.cancel

    def step(self, report: StepReport) -> None:
        """Where the epoch in progress stands (a long epoch's steps), written at once for the event stream. A
        failed write only skips this report (the next comes in a few seconds); a lost lease stops the job."""
        try:
            with session_scope(self.sessions) as s:
                queue.record_steps(session=s, job_id=self.job_id, token=self.token,
                                   steps={"epoch": report.epoch, "step": report.step, "steps": report.steps,
                                          "samples_per_second": round(report.samples_per_second, 1),
                                          "eta_s": round(report.eta_s, 1)})
        except queue.LeaseLost:
            raise
        except Exception as exc:
            log.warning("job %s: progress of epoch %d not recorded (%s)", self.job_id, report.epoch, exc)

    def flush(self) -> None:
        pending, rows = self.pending, self.rows
        with session_scope(self.sessions) as s:
            self.cancel = queue.record_epochs(session=s, job_id=self.job_id, token=self.token, rows=rows,
                                              lease_s=self.settings.lease_s, checkpoint=pending)
        self.rows, self.pending, self.last_flush = [], None, time.monotonic()
        if pending is not None:
            self.storage.prune_checkpoints(self.job_id, keep=pending["file"])


def _resume_point(storage: Storage, job_id: str, checkpoint: dict[str, Any] | None,
                  kind: str) -> tuple[Resume | None, list[dict[str, Any]]]:
    """(snapshot, history) of the checkpoint the database points at, or (None, []) to start afresh."""
    if not checkpoint:
        return None, []
    try:
        fields, extra = load_checkpoint(storage.fetch_checkpoint(job_id, checkpoint["file"]), checkpoint["file"])
        if extra.get("kind", "network") != kind:
            raise ValueError(f"a {extra.get('kind', 'network')} checkpoint for a {kind} job")
        state: Resume = EnsembleState(**fields) if kind == "ensemble" else TrainState(**fields)
    except StorageUnavailable:
        raise  # the job is handed back and resumes once the bucket answers again
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("job %s: checkpoint %s unreadable (%s); starting from epoch 0", job_id, checkpoint, exc)
        return None, []
    return state, extra["history"]


class _Stop(Exception):
    """The job ends here with this message (bad data, diverged, out of memory, time limit)."""


def _load(sessions: sessionmaker[Session], storage: Storage, job_id: str, token: str,
          device_description: str) -> tuple[StoredSpec, Dataset | None, Resume | None, list[dict[str, Any]]]:
    """The job's resolved spec, its data set row and the point to resume from; the attempt is recorded."""
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} is not in the database")
        dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
        spec, checkpoint = read_spec(job.spec), job.checkpoint
        if dataset is not None:
            s.expunge(dataset)
    resume, history = _resume_point(storage, job_id, checkpoint, _kind(spec))
    with session_scope(sessions) as s:
        queue.start_attempt(session=s, job_id=job_id, token=token, device=device_description,
                            from_epoch=resume.epoch if resume else 0)
    if resume:
        log.info("job %s: resuming after epoch %d", job_id, resume.epoch)
    return spec, dataset, resume, history


def _kind(spec: StoredSpec) -> str:
    return "ensemble" if spec.model.type == "ensemble" else "network"


def _prepare(spec: StoredSpec, dataset: Dataset, storage: Storage, budget: int | None = None) -> Prepared:
    """The data set's rows as training arrays, split and preprocessed as the spec says; streamed from its row groups
    instead when the prepared arrays would exceed `budget` bytes (see service.training.streaming)."""
    training = spec.training
    split = SplitSpec(validation_fraction=required(training.validation_fraction, "training.validation_fraction"),
                      test_fraction=required(training.test_fraction, "training.test_fraction"),
                      seed=required(training.seed, "training.seed"))
    path = storage.dataset_file(dataset.id, dataset.format)
    if dataset.format == "npz":
        return prepare_arrays(ingest.load_arrays(path), task=spec.task, split=split,
                              class_weights=training.class_weights)
    columns = {c["name"]: c for c in dataset.columns}
    # The kinds the job was submitted with (a later PATCH of the data set does not change a queued job); specs
    # stored before kinds were recorded take the data set's.
    kinds = spec.column_kinds or {f: columns[f]["kind"] for f in spec.features}
    layouts = spec.date_layouts or {f: columns[f]["datetime_layout"] for f in spec.features
                                    if columns[f].get("datetime_layout")}
    plan, loaded_whole = streaming.plan_for_job(
        path, n_rows=dataset.n_rows, columns=columns, features=spec.features, kinds=kinds, targets=spec.targets,
        encoding=encoding_for(spec), budget=budget, model_type=spec.model.type, optimizer=training.optimizer,
        seed=split.seed, validation_fraction=split.validation_fraction, test_fraction=split.test_fraction,
        batch_size=required(training.batch_size, "training.batch_size")) if budget is not None else (None, None)
    if plan is not None:
        return streaming.prepare_streamed(plan, targets=spec.targets, features=spec.features, kinds=kinds,
                                          task=spec.task, class_weights=training.class_weights,
                                          encoding=encoding_for(spec))
    table = load_columns(path, [*spec.features, *spec.targets])
    prepared = prepare(table, targets=spec.targets, features=spec.features, kinds=kinds, layouts=layouts,
                       task=spec.task, split=split, class_weights=training.class_weights, encoding=encoding_for(spec))
    if loaded_whole is not None:
        prepared.info["data"] = loaded_whole
    return prepared


def encoding_for(spec: StoredSpec) -> Encoding:
    """The ensemble's inputs: missing-value indicators, piecewise-linear bins, and no one-hot input for a level
    seen in one training row only; the single networks keep the lecture's plain encoding."""
    if spec.model.type != "ensemble":
        return Encoding()
    # specs stored before kinds were recorded keep quantile bins only
    n_numeric = sum(spec.column_kinds.get(f) == "numeric" for f in spec.features)
    return Encoding(missing_indicators=True, bins=spec.model.bins or 0, min_category_rows=2,
                    integer_levels=ensemble_integer_levels(n_numeric) if n_numeric else 0)


def _pair(values: list[float] | None, name: str) -> tuple[float, float]:
    """A [low, high] range of the spec (the schema checks its length)."""
    low, high = required(values, name)
    return low, high


def ensemble_config(spec: StoredSpec) -> EnsembleConfig:
    model, training = spec.model, spec.training
    return EnsembleConfig(members=required(model.members, "model.members"), folds=required(model.folds, "model.folds"),
                          hidden_layers=tuple(required(model.hidden_layers, "model.hidden_layers")),
                          activation=required(model.activation, "model.activation"),
                          linear_skip=bool(model.linear_skip),
                          # specs stored before linear members existed leave it out: they train as they did
                          linear_members=bool(model.linear_members),
                          epochs=required(training.epochs, "training.epochs"),
                          batch_size=required(training.batch_size, "training.batch_size"),
                          learning_rate_range=_pair(training.learning_rate_range, "training.learning_rate_range"),
                          weight_decay_range=_pair(training.weight_decay_range, "training.weight_decay_range"),
                          dropout_range=_pair(model.dropout_range, "model.dropout_range"),
                          early_stopping_patience=required(training.early_stopping_patience,
                                                           "training.early_stopping_patience"),
                          gradient_clip_norm=training.gradient_clip_norm, seed=required(training.seed, "training.seed"))


def _train(spec: StoredSpec, prepared: Prepared, device: str, hook: EpochHook, resume: Resume | None,
           history: list[dict[str, Any]], on_step: StepHook | None = None) -> TrainResult:
    model = spec.model
    if model.type == "perceptron":
        return train_perceptron(prepared.data, TrainConfig.from_dict(spec.training.model_dump()), on_epoch=hook)
    # _resume_point reads a checkpoint only of the job's own kind
    if model.type == "ensemble" and prepared.stream is not None:
        return streaming.train_ensemble_streamed(
            prepared.stream, prepared.data, ensemble_config(spec), device=device, on_epoch=hook,
            resume=resume if isinstance(resume, EnsembleState) else None, history=history, on_step=on_step)
    if model.type == "ensemble":
        return train_ensemble(prepared.data, ensemble_config(spec), device=device, on_epoch=hook,
                              resume=resume if isinstance(resume, EnsembleState) else None, history=history,
                              on_step=on_step)
    net_spec = NetSpec(type=model.type, hidden_layers=tuple(required(model.hidden_layers, "model.hidden_layers")),
                       activation=required(model.activation, "model.activation"),
                       dropout=float(required(model.dropout, "model.dropout")), batch_norm=bool(model.batch_norm))
    if prepared.stream is not None:
        return streaming.train_network_streamed(
            prepared.stream, prepared.data, net_spec, TrainConfig.from_dict(spec.training.model_dump()),
            device=device, on_epoch=hook, resume=resume if isinstance(resume, TrainState) else None, history=history,
            on_step=on_step)
    return train(prepared.data, net_spec, TrainConfig.from_dict(spec.training.model_dump()), device=device,
                 on_epoch=hook, resume=resume if isinstance(resume, TrainState) else None, history=history,
                 on_step=on_step)


def _step_hook(progress: Progress, threads: Threads) -> StepHook:
    """Inside a long epoch: the epoch's steps to the database, and the thread count looked at again."""

    def on_step(report: StepReport) -> None:
        progress.step(report)
        threads.adjust()

    return on_step


def _hook(progress: Progress, spec: StoredSpec, history: list[dict[str, Any]], stop: dict[str, str],
          threads: Threads | None = None) -> EpochHook:
    """The runner's answer to each epoch report: checkpoint when due, queue the metrics, stop on cancel or on
    the job's time limit; the thread count is looked at again every RETHREAD_S."""
    started = time.perf_counter()
    earlier_seconds = sum(row.get("seconds", 0.0) for row in history)
    kind = _kind(spec)

    def on_epoch(report: EpochReport) -> str | None:
        if progress.due():
            state = report.snapshot()
            if state is not None:
                progress.checkpoint(state, report.history, kind)
        cancel = progress.add(report.epoch, report.metrics)
        if threads is not None:
            threads.adjust()
        ran = earlier_seconds + time.perf_counter() - started
        if spec.max_runtime_s is not None and ran > spec.max_runtime_s:
            progress.flush()
            stop["message"] = (f"the job exceeded its time limit (max_runtime_s={spec.max_runtime_s}) at epoch "
                               f"{report.epoch} after {ran:.1f} s of training; raise max_runtime_s or lower epochs")
            return "time_limit"
        return "cancelled" if cancel else None

    return on_epoch


def _run(settings: Settings, sessions: sessionmaker[Session], storage: Storage, job_id: str, token: str, device: str,
         device_description: str, jobs_on_device: int = 1) -> None:
    threads = Threads(settings.torch_threads, jobs_on_device)  # measures the load from here until training starts
    spec, dataset, resume, history = _load(sessions, storage, job_id, token, device_description)
    if dataset is None:
        _fail(sessions, job_id, token, "the job's data set was deleted before it could start")
        return
    started = time.perf_counter()
    progress = Progress(settings, sessions, job_id, token, storage)
    stop: dict[str, str] = {}
    try:
        try:
            streaming.reset_peak_rss()  # this process's peak from here, not its parent's
            rss_start = streaming.current_rss()
            budget = streaming.budget_bytes(settings.train_memory_bytes, jobs_on_device)
            prepared = _prepare(spec, dataset, storage, budget)
            threads.start(_step_work(spec, prepared))
            data_seconds = time.perf_counter() - started
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            result = _train(spec, prepared, device, _hook(progress, spec, history, stop, threads), resume, history,
                            _step_hook(progress, threads))
            progress.flush()
            if result.stopped_by == "time_limit":
                raise _Stop(stop["message"])
            report = final_report(result.net, prepared, device=device, held_out=result.held_out) \
                if result.stopped_by is None else {}
        except (ingest.DataError, TrainingError) as exc:
            raise _Stop(str(exc)) from None
        except torch.OutOfMemoryError:
            raise _Stop(f"out of memory on {device_description}; use a smaller batch_size or smaller hidden layers"
                        + (" or fewer members" if spec.model.type == "ensemble" else "")) from None
    except _Stop as exc:
        progress.flush()  # the curve up to the failure stays visible
        _fail(sessions, job_id, token, str(exc))
        _drop_checkpoints(storage, job_id)
        return
    if result.cancelled:
        with session_scope(sessions) as s:
            queue.finish_cancelled(session=s, job_id=job_id, token=token)
        _drop_checkpoints(storage, job_id)
        return
    _publish(sessions, storage, job_id, token, spec, dataset, prepared, result, report, device,
             {"resumed_from_epoch": resume.epoch if resume else None, "threads": threads.counts[0],
              **({"threads_changed": threads.counts[1:]} if len(threads.counts) > 1 else {}),
              "data_seconds": round(data_seconds, 3),
              "memory": {"budget_bytes": budget, "rss_start_bytes": rss_start, "rss_peak_bytes": streaming.peak_rss()}})
    _drop_checkpoints(storage, job_id)
    log.info("job %s succeeded (data %.2f s, total %.2f s)", job_id, data_seconds, time.perf_counter() - started)


def _drop_checkpoints(storage: Storage, job_id: str) -> None:
    """The ended job's checkpoints go; if the bucket is away just now, the API's sweep removes them later."""
    try:
        storage.remove_checkpoints(job_id)
    except (StorageUnavailable, StorageRefused) as exc:
        log.warning("job %s: checkpoints not removed (%s); the API's sweep removes them later", job_id, exc)


def _step_work(spec: StoredSpec, prepared: Prepared) -> int:
    """Weights × batch size × members: how much one minibatch step can share out between threads."""
    model = spec.model
    layered = model.type in ("mlp", "autoencoder", "ensemble")
    hidden = required(model.hidden_layers, "model.hidden_layers") if layered else []
    n_inputs: int = prepared.data.X_train.shape[1]
    width = [n_inputs, *hidden, prepared.data.n_outputs]
    weights = sum(a * b for a, b in zip(width, width[1:], strict=False))
    members = required(model.members, "model.members") if model.type == "ensemble" else 1
    rows = len(prepared.data.X_train) + len(prepared.data.X_val)
    return weights * members * min(required(spec.training.batch_size, "training.batch_size"), max(rows, 1))


def kept_figures(result: TrainResult, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The kept model's validation figures: the ensemble's own, else the kept epoch's row."""
    if result.kept_metrics is not None:
        return {"epoch": len(history), **result.kept_metrics}
    kept = result.best_epoch or len(history)
    return {"epoch": kept, **{k: v for k, v in history[kept - 1].items() if not k.startswith("member")}}


def _publish(sessions: sessionmaker[Session], storage: Storage, job_id: str, token: str, spec: StoredSpec,
             dataset: Dataset, prepared: Prepared, result: TrainResult, report: dict[str, Any], device: str,
             facts: dict[str, Any]) -> None:
    """Write the model folder, then mark the job succeeded with the model row in one transaction."""
    # The plots' figures (held-out predictions, ROC curves) stay with the job's result: the model's metrics are
    # its headline figures, repeated in every model listing and in model.json.
    final = {**kept_figures(result, result.history), **{k: v for k, v in report.items() if k != "report"}}
    model_id = queue.new_id("mdl")
    meta = ModelMeta(
        model_id=model_id, job_id=job_id, dataset_id=dataset.id, spec=spec.to_json(), task=spec.task,
        target_columns=spec.targets, features=_feature_schema(prepared.preprocessing),
        preprocessing=prepared.preprocessing, target=prepared.target, n_inputs=prepared.data.X_train.shape[1],
        n_outputs=prepared.data.n_outputs, metrics=final, data=prepared.info,
        ensemble=result.info.get("ensemble"))
    staging = storage.temp_dir()
    size = save_model(staging / model_id, result.net, meta)
    storage.publish_model(staging / model_id, model_id)
    staging.rmdir()
    train_seconds = sum(row.get("seconds", 0.0) for row in result.history)
    run_info = {**prepared.info, "parameters": count_parameters(result.net),
                "train_seconds": round(train_seconds, 3), "epochs_run": len(result.history),
                "samples_per_second": round(prepared.info["n_train"] * len(result.history) / max(train_seconds, 1e-9)),
                **facts, "best_epoch": result.best_epoch, "early_stopped_at": result.stopped_at, **report,
                **result.info, "metrics": final}
    model = Model(id=model_id, job_id=job_id, dataset_id=dataset.id, model_type=spec.model.type, task=spec.task,
                  target=",".join(spec.targets) or None, features=meta.features,
                  labels=prepared.target.get("labels"), metrics=final, size_bytes=size)
    if device.startswith("cuda"):
        run_info["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    try:
        with session_scope(sessions) as s:
            queue.succeed(session=s, job_id=job_id, token=token, model=model, result=run_info)
    except BaseException:
        storage.remove_model(model_id)
        raise
