"""One job, run inside its own child process: load data, train, store the model, report through the queue."""

import contextlib
import logging
import time
from typing import Any

import torch

from service import queue
from service.config import Settings
from service.db import make_engine, make_sessionmaker, session_scope
from service.storage import Storage, publish
from service.tables import Dataset, Job, Model
from service.training import data as D
from service.training.artifact import save_model
from service.training.loop import TrainConfig, TrainingError, train
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


def run_job(settings_json: str, job_id: str, token: str, device: str, device_description: str) -> None:
    """Entry point of the child process. Every write is guarded by the lease token."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate_json(settings_json)
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


def _fail(sessions, job_id: str, token: str, message: str) -> None:
    with session_scope(sessions) as s:
        queue.fail(session=s, job_id=job_id, token=token, error=message)


def _run(settings: Settings, sessions, storage: Storage, job_id: str, token: str, device: str,
         device_description: str) -> None:
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
        spec, task = job.spec, job.task
        columns = {c["name"]: c for c in dataset.columns} if dataset else {}
        queue.start_attempt(session=s, job_id=job_id, token=token, device=device_description)
    if dataset is None:
        _fail(sessions, job_id, token, "the job's data set was deleted before it could start")
        return
    features = spec["features"]
    targets = spec.get("targets") or ([spec["target"]] if spec.get("target") else [])
    training = spec["training"]
    split = SplitSpec(validation_fraction=training["validation_fraction"],
                      test_fraction=training.get("test_fraction", 0.0), seed=training["seed"])
    net_spec = NetSpec.from_dict(spec["model"])
    config = TrainConfig.from_dict(training)
    started = time.perf_counter()

    def on_epoch(epoch: int, metrics: dict[str, Any]) -> bool:
        with session_scope(sessions) as s:
            cancel = queue.record_epoch(session=s, job_id=job_id, token=token, epoch=epoch, metrics=metrics,
                                        lease_s=settings.lease_s)
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
        if net_spec.type == "perceptron":
            result = train_perceptron(prepared.data, config, on_epoch=on_epoch)
        else:
            result = train(prepared.data, net_spec, config, device=device, on_epoch=on_epoch)
        report = final_report(result.net, prepared, device=device) if not result.cancelled else {}
    except (D.DataError, TrainingError) as exc:
        _fail(sessions, job_id, token, str(exc))
        return
    except torch.OutOfMemoryError:
        _fail(sessions, job_id, token, f"out of memory on {device_description}; use a smaller batch_size "
                                        "or smaller hidden layers")
        return
    if result.cancelled:
        with session_scope(sessions) as s:
            queue.finish_cancelled(session=s, job_id=job_id, token=token)
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
    run_info = {**prepared.info, "parameters": count_parameters(result.net),
                "train_seconds": round(time.perf_counter() - started, 3), "epochs_run": len(result.history),
                "best_epoch": result.best_epoch, "early_stopped_at": result.stopped_at, **report, **result.info}
    model = Model(id=model_id, job_id=job_id, dataset_id=dataset.id, model_type=net_spec.type, task=task,
                  target=",".join(targets) or None, features=meta["features"],
                  labels=prepared.target.get("labels"),
                  metrics=final, size_bytes=size)
    try:
        with session_scope(sessions) as s:
            queue.succeed(session=s, job_id=job_id, token=token, model=model, result=run_info)
    except BaseException:
        storage.remove_model(model_id)
        raise
    log.info("job %s succeeded: model %s, %s", job_id, model_id, final)
