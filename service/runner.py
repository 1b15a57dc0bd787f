"""One job, run inside its own child process: load data, train, store the model, report through the queue."""

import contextlib
import logging
import os
import select
import shutil
import threading
import time
from typing import Any

import torch

from service import queue
from service.config import Settings
from service.db import make_engine, make_sessionmaker, session_scope
from service.logs import configure as configure_logging
from service.logs import job_id_var
from service.storage import Storage, publish
from service.tables import Dataset, Job, Model
from service.training import data as D
from service.training.artifact import load_checkpoint, prune_checkpoints, save_checkpoint, save_model
from service.training.loop import TrainConfig, TrainingError, TrainState, train
from service.training.nets import NetSpec, count_parameters
from service.training.perceptron import train_perceptron
from service.training.pipeline import SplitSpec, final_report, prepare, prepare_arrays

log = logging.getLogger("mlps.runner")


def _feature_schema(preprocessing: dict[str, Any]) -> list[dict[str, Any]]:
    if preprocessing.get("kind") == "array":
        return [{"name": "X", "kind": "tensor", "shape": preprocessing["shape"]}]
    out = []
    for f in preprocessing["features"]:
        item = {"name": f["name"], "kind": f["kind"]}
        if f["kind"] == "categorical":
            item["categories"] = f["categories"]
        out.append(item)
    return out


def run_job(settings_json: str, job_id: str, token: str, device: str, device_description: str,
            worker_pid: int) -> None:
    """Entry point of the child process. Every write is guarded by the lease token."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_format)
    job_id_var.set(job_id)
    _exit_with_worker(worker_pid)
    log.info("job %s: training process %d started on %s", job_id, os.getpid(), device_description)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    storage = Storage(settings.data_dir)
    try:
        _run(settings, sessions, storage, job_id, token, device, device_description)
    except queue.LeaseLost:
        log.warning("job %s: lease lost; another attempt owns it now, stopping", job_id)
    except Exception as exc:
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


def _set_threads(configured: int, work: int) -> int:
    """Threads for this job: the configured count, else 1 for small steps (a pool costs more than it
    saves there), else torch's default. The fork server warmed up on one thread (see service.preload)."""
    from service.preload import DEFAULT_THREADS

    threads = configured or (1 if work < SMALL_STEP_WORK else DEFAULT_THREADS)
    torch.set_num_threads(threads)
    return threads


def _fail(sessions, job_id: str, token: str, message: str) -> None:
    with session_scope(sessions) as s:
        queue.fail(session=s, job_id=job_id, token=token, error=message)


class Progress:
    """Epoch metrics and checkpoints on their way to the database, written together in one guarded
    transaction at most every `progress_flush_s` (and at the end), so that tiny epochs do not each pay
    for a commit and a checkpoint, and a resumed attempt never finds rows past its checkpoint."""

    def __init__(self, settings: Settings, sessions, job_id: str, token: str, folder) -> None:
        self.settings, self.sessions, self.job_id, self.token, self.folder = settings, sessions, job_id, token, folder
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self.pending: dict[str, Any] | None = None
        self.last_flush = time.monotonic()
        self.cancel = False

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.settings.progress_flush_s

    def checkpoint(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """Write the files now; the database points at them when the epoch's metrics are flushed."""
        name = f"{self.token[:8]}-{state.epoch}"
        save_checkpoint(self.folder, name, state, {"history": history})
        self.pending = {"epoch": state.epoch, "file": name}

    def add(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Queue one epoch's metrics; flush when a checkpoint waits or time is up. Returns cancel requested."""
        self.rows.append((epoch, metrics))
        if self.pending is not None or self.due():
            self.flush()
        return self.cancel

    def flush(self) -> None:
        pending, rows = self.pending, self.rows
        with session_scope(self.sessions) as s:
            self.cancel = queue.record_epochs(session=s, job_id=self.job_id, token=self.token, rows=rows,
                                              lease_s=self.settings.lease_s, checkpoint=pending)
        self.rows, self.pending, self.last_flush = [], None, time.monotonic()
        if pending is not None:
            prune_checkpoints(self.folder, keep=pending["file"])


class TimeLimit(Exception):
    """The job has trained longer than its max_runtime_s."""


def _resume_point(storage: Storage, job_id: str, checkpoint: dict[str, Any] | None):
    """(TrainState, history) of the checkpoint the database points at, or (None, []) to start afresh."""
    if not checkpoint:
        return None, []
    try:
        fields, extra = load_checkpoint(storage.checkpoint_dir(job_id), checkpoint["file"])
    except (OSError, ValueError, KeyError) as exc:
        log.warning("job %s: checkpoint %s unreadable (%s); starting from epoch 0", job_id, checkpoint, exc)
        return None, []
    return TrainState(**fields), extra["history"]


def _run(settings: Settings, sessions, storage: Storage, job_id: str, token: str, device: str,
         device_description: str) -> None:
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
        spec, task, checkpoint = job.spec, job.task, job.checkpoint
    resume, history = _resume_point(storage, job_id, checkpoint)
    with session_scope(sessions) as s:
        queue.start_attempt(session=s, job_id=job_id, token=token, device=device_description,
                            from_epoch=resume.epoch if resume else 0)
    if resume:
        log.info("job %s: resuming after epoch %d", job_id, resume.epoch)
    if dataset is None:
        _fail(sessions, job_id, token, "the job's data set was deleted before it could start")
        return
    columns = {c["name"]: c for c in dataset.columns}
    features = spec["features"]
    targets = spec.get("targets") or ([spec["target"]] if spec.get("target") else [])
    training = spec["training"]
    split = SplitSpec(validation_fraction=training["validation_fraction"],
                      test_fraction=training.get("test_fraction", 0.0), seed=training["seed"])
    net_spec = NetSpec.from_dict(spec["model"])
    config = TrainConfig.from_dict(training)
    max_runtime = spec.get("max_runtime_s")
    started = time.perf_counter()
    earlier_seconds = sum(row.get("seconds", 0.0) for row in history)
    ckpt_dir = storage.checkpoint_dir(job_id)
    progress = Progress(settings, sessions, job_id, token, ckpt_dir)

    def on_state(state: TrainState, rows: list[dict[str, Any]]) -> None:
        if progress.due():
            progress.checkpoint(state, rows)

    def on_epoch(epoch: int, metrics: dict[str, Any]) -> bool:
        cancel = progress.add(epoch, metrics)
        ran = earlier_seconds + time.perf_counter() - started
        if max_runtime is not None and ran > max_runtime:
            progress.flush()
            raise TimeLimit(f"the job exceeded its time limit (max_runtime_s={max_runtime}) at epoch {epoch} "
                            f"after {ran:.1f} s of training; raise max_runtime_s or lower epochs")
        return not cancel

    try:
        path = storage.dataset_file(dataset.id, dataset.format)
        if dataset.format == "npz":
            prepared = prepare_arrays(D.load_arrays(path), task=task, split=split,
                                      class_weights=training.get("class_weights"))
        else:
            table = D.load_columns(path, [*features, *targets])
            prepared = prepare(table, targets=targets, features=features,
                               kinds={f: columns[f]["kind"] for f in features}, task=task, split=split,
                               class_weights=training.get("class_weights"))
        width = [prepared.data.X_train.shape[1], *net_spec.hidden_layers, prepared.data.n_outputs]
        weights = sum(a * b for a, b in zip(width, width[1:], strict=False))
        threads = _set_threads(settings.torch_threads, weights * min(config.batch_size, len(prepared.data.X_train)))
        data_seconds = time.perf_counter() - started
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        if net_spec.type == "perceptron":
            result = train_perceptron(prepared.data, config, on_epoch=on_epoch)
        else:
            result = train(prepared.data, net_spec, config, device=device, on_epoch=on_epoch, on_state=on_state,
                           resume=resume, history=history)
        progress.flush()
        report = final_report(result.net, prepared, device=device) if not result.cancelled else {}
    except (D.DataError, TrainingError, TimeLimit) as exc:
        progress.flush()  # the curve up to the failure stays visible
        _fail(sessions, job_id, token, str(exc))
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return
    except torch.OutOfMemoryError:
        progress.flush()
        _fail(sessions, job_id, token, f"out of memory on {device_description}; use a smaller batch_size "
                                        "or smaller hidden layers")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return
    if result.cancelled:
        with session_scope(sessions) as s:
            queue.finish_cancelled(session=s, job_id=job_id, token=token)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return

    kept = result.best_epoch or len(result.history)
    final = {"epoch": kept, **result.history[kept - 1], **report}
    model_id = queue.new_id("mdl")
    meta = {
        "model_id": model_id, "job_id": job_id, "dataset_id": dataset.id,
        "spec": spec, "task": task, "target_columns": targets,
        "features": _feature_schema(prepared.preprocessing),
        "preprocessing": prepared.preprocessing, "target": prepared.target,
        "n_inputs": prepared.data.X_train.shape[1], "n_outputs": prepared.data.n_outputs,
        "metrics": final, "data": prepared.info,
    }
    staging = storage.temp_dir()
    size = save_model(staging / model_id, result.net, meta)
    publish(staging / model_id, storage.model_dir(model_id))
    staging.rmdir()
    train_seconds = sum(row.get("seconds", 0.0) for row in result.history)
    run_info = {**prepared.info, "parameters": count_parameters(result.net),
                "train_seconds": round(train_seconds, 3), "epochs_run": len(result.history),
                "samples_per_second": round(prepared.info["n_train"] * len(result.history) / max(train_seconds, 1e-9)),
                "resumed_from_epoch": resume.epoch if resume else None, "threads": threads,
                "data_seconds": round(data_seconds, 3),
                "best_epoch": result.best_epoch, "early_stopped_at": result.stopped_at, **report, **result.info}
    model = Model(id=model_id, job_id=job_id, dataset_id=dataset.id, model_type=net_spec.type, task=task,
                  target=",".join(targets) or None, features=meta["features"],
                  labels=prepared.target.get("labels"),
                  metrics=final, size_bytes=size)
    if device.startswith("cuda"):
        run_info["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    try:
        with session_scope(sessions) as s:
            queue.succeed(session=s, job_id=job_id, token=token, model=model, result=run_info)
    except BaseException:
        storage.remove_model(model_id)
        raise
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("job %s succeeded: model %s (data %.2f s, training %.2f s, total %.2f s)", job_id, model_id,
             data_seconds, train_seconds, time.perf_counter() - started)
