"""From a table (or arrays) and a spec to arrays ready for training, and from inputs back to predictions."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch
from numpy.typing import NDArray
from torch import nn

from service.training import ingest
from service.training import metrics as M
from service.training.artifact import ModelMeta
from service.training.ensemble import ensemble_outputs
from service.training.ensemble import spread as ensemble_spread
from service.training.features import (
    ClassWeights,
    Encoding,
    decode_regression,
    encode_regression,
    encode_target,
    fit_preprocessing,
    fit_regression_targets,
    fit_target,
    split_rows,
    transform,
)
from service.training.features import class_weights as balanced_weights
from service.training.loop import Task, TrainData, as_floats, forward_chunked
from service.training.nets import EnsembleNet


@dataclass
class Prepared:
    data: TrainData
    preprocessing: dict[str, Any]
    target: dict[str, Any]
    info: dict[str, Any]
    X_test: NDArray[np.float32]
    y_test: NDArray[Any] | None
    # streaming.TrainStream of the training rows when they are streamed (data.X_train then holds no rows)
    stream: Any = None


@dataclass(frozen=True)
class SplitSpec:
    validation_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0


def _three_way(n: int, split: SplitSpec,
               strata: NDArray[Any] | None) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """(train, validation, test) row indices: test first, then validation from the rest, both seeded."""
    rows = np.arange(n)
    test = np.arange(0)
    if split.test_fraction > 0:
        s = split_rows(n, split.test_fraction, split.seed, strata)
        rows, test = s.train, s.validation
    fraction = split.validation_fraction / (1 - split.test_fraction) if split.test_fraction > 0 else \
        split.validation_fraction
    s = split_rows(len(rows), fraction, split.seed + 1 if split.test_fraction > 0 else split.seed,
                     strata[rows] if strata is not None else None)
    return rows[s.train], rows[s.validation], test


def _fit_targets(table: pa.Table | None, targets: list[str],
                 task: str) -> tuple[dict[str, Any], NDArray[Any] | None, NDArray[np.bool_] | None]:
    """(target parameters, encoded targets or None, rows that have a target)."""
    if task not in ("classification", "regression"):
        return {"task": task}, None, None
    if table is None:
        raise ingest.DataError(f"the data have no target '{targets[0]}' for a {task} task", column=targets[0])
    if task == "classification":
        params = fit_target(table.column(targets[0]), task)
        classes = encode_target(table.column(targets[0]), params)
        if len(params["labels"]) < 2:
            only = params["labels"][0] if params["labels"] else None
            raise ingest.DataError(f"target '{targets[0]}' has only one class ({only!r}); classification needs at "
                              "least two", column=targets[0])
        return params, classes, classes >= 0
    params = fit_regression_targets(table, targets)
    values = encode_regression(table, params)
    # any(axis=1) of a matrix is a vector; numpy's annotation allows a scalar too
    return params, values, ~cast(NDArray[np.bool_], np.isnan(values).any(axis=1))


def _assemble(task: str, params: dict[str, Any], y_all: NDArray[Any] | None,
              X_of: Callable[[NDArray[np.intp]], NDArray[np.float32]], split: SplitSpec,
              class_weights: ClassWeights,
              n_rows: int) -> tuple[TrainData, NDArray[np.float32], NDArray[Any] | None, dict[str, int]]:
    """Split rows, then build TrainData and the held-out test arrays; X_of(rows) gives the inputs."""
    train, val, test = _three_way(n_rows, split, y_all if task == "classification" else None)

    def y(rows: NDArray[np.intp]) -> NDArray[Any] | None:
        if y_all is None:
            return None
        return y_all[rows].astype(np.int64 if task == "classification" else np.float32)

    weights = (balanced_weights(y_all[train], params["labels"], class_weights)
               if task == "classification" and y_all is not None else None)
    data = TrainData(task=task, X_train=X_of(train), y_train=y(train), X_val=X_of(val), y_val=y(val),
                     n_classes=len(params.get("labels", [])), target_scale=params.get("scale", 1.0),
                     class_weights=weights)
    counts = {"n_train": int(len(train)), "n_validation": int(len(val)), "n_test": int(len(test))}
    return data, X_of(test), y(test), counts


def prepare(table: pa.Table, *, targets: list[str], features: list[str], kinds: dict[str, str], task: str,
            split: SplitSpec, class_weights: ClassWeights = None,
            encoding: Encoding = Encoding(), layouts: dict[str, str] | None = None) -> Prepared:
    """Drop rows without a target, split (stratified for classes), fit preprocessing on the training rows."""
    params, y_all, keep = _fit_targets(table, targets, task)
    n_dropped = 0
    if keep is not None and y_all is not None:
        n_dropped = int((~keep).sum())
        if n_dropped == len(keep):
            raise ingest.DataError(f"target '{targets[0]}' has no values", column=targets[0])
        if n_dropped:
            table, y_all = table.filter(pa.array(keep)), y_all[keep]
    fitted: dict[str, Any] = {}

    def X_of(rows: NDArray[np.intp]) -> NDArray[np.float32]:
        # The first call is with the training rows: preprocessing is fitted on them alone.
        part = table.take(pa.array(rows))
        if not fitted:
            fitted.update(fit_preprocessing(part, features, kinds, encoding, layouts))
            if fitted["n_inputs"] == 0:
                raise ingest.DataError("no feature gives the network an input: every level of the categorical "
                                  "feature(s) occurs in one training row only (identifiers?); choose other features")
        return transform(part, fitted)

    data, X_test, y_test, counts = _assemble(task, params, y_all, X_of, split, class_weights, table.num_rows)
    info = {**counts, "n_rows_without_target": n_dropped, "n_inputs": int(fitted["n_inputs"])}
    return Prepared(data=data, preprocessing=fitted, target=params, info=info, X_test=X_test, y_test=y_test)


def prepare_arrays(arrays: dict[str, NDArray[Any]], *, task: str, split: SplitSpec,
                   class_weights: ClassWeights = None) -> Prepared:
    """Image-like arrays: X [N, C, H, W] flattened to N × (C·H·W) like features.view(-1, C*H*W); uint8 → [0, 1]."""
    X_raw = arrays["X"]
    shape = list(X_raw.shape[1:])
    scale = 1.0 / 255.0 if X_raw.dtype == np.uint8 else 1.0
    X_all = X_raw.reshape(len(X_raw), -1).astype(np.float32) * np.float32(scale)
    pre = {"kind": "array", "shape": shape, "scale": scale, "n_inputs": int(X_all.shape[1])}
    table = pa.table({"y": pa.array(arrays["y"])}) if "y" in arrays else None
    params, y_all, keep = _fit_targets(table, ["y"], task)
    if keep is not None and not keep.all():
        raise ingest.DataError("'y' has missing values; every record needs a target", column="y")
    data, X_test, y_test, counts = _assemble(task, params, y_all, lambda rows: X_all[rows], split, class_weights,
                                             len(X_all))
    info = {**counts, "n_rows_without_target": 0, "n_inputs": pre["n_inputs"], "input_shape": shape}
    return Prepared(data=data, preprocessing=pre, target=params, info=info, X_test=X_test, y_test=y_test)


# The figures the plots draw are bounded, so that a job's result stays small whatever the size of its data.
SAMPLE_POINTS = 1000  # (actual, predicted) pairs per regression target
ROC_POINTS = 200  # points per ROC curve
# float32 networks and float32 targets carry about 7 significant digits; more would be noise in the JSON.
SIGNIFICANT_DIGITS = 7


def final_report(net: nn.Module, prepared: Prepared, device: str = "cpu",
                 held_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Held-out test metrics (once, on the final model), for classifiers a labelled confusion matrix, and the figures
    the plots draw (`report`, see held_out_report): of the test rows, else of the validation rows, else of
    `held_out` (an ensemble's out-of-fold outputs and targets)."""
    data = prepared.data
    out: dict[str, Any] = {}
    has_test = len(prepared.X_test) > 0
    if not has_test and len(data.X_val) == 0 and held_out is not None:
        outputs, targets = held_out
        split = "out-of-fold"
    else:
        X_eval, y_eval = (prepared.X_test, prepared.y_test) if has_test else (data.X_val, data.y_val)
        if len(X_eval) == 0:
            return out
        dev = torch.device(device)
        task = Task(data, dev)
        Xt = torch.as_tensor(X_eval, dtype=torch.float32, device=dev)
        targets = task.targets(Xt, y_eval)
        net.eval()
        with torch.inference_mode():
            outputs = network_outputs(net, Xt, data.task, data.n_classes)
            if has_test:
                out["test"] = as_floats(task.metrics(outputs, targets))
        split = "test" if has_test else "validation"
    with torch.inference_mode():
        if data.task == "classification" and data.n_classes:
            cm = M.confusion_matrix(targets, M.predicted_classes(outputs, data.n_classes), data.n_classes)
            out["confusion_matrix"] = {"split": split, "labels": [str(v) for v in prepared.target["labels"]],
                                       "matrix": cm.cpu().tolist()}
        report = held_out_report(outputs, targets, prepared.target, split)
    if report is not None:
        out["report"] = report
    return out


def held_out_report(outputs: torch.Tensor, targets: torch.Tensor, target: dict[str, Any],
                    split: str) -> dict[str, Any] | None:
    """What the plots draw of the held-out rows, as JSON values: for regression a sample (every row up to
    SAMPLE_POINTS, else that many evenly spaced) of actual and predicted values per target in the target's units;
    for classification the ROC curve (binary: of the second label; else one per class against the rest) of at most
    ROC_POINTS points with its AUC, and each class's precision, recall, F1 and support. None for an autoencoder."""
    task = target["task"]
    base: dict[str, Any] = {"split": split, "n_rows": len(targets), "predictions": None, "roc": None, "classes": None}
    if task == "regression":
        return {**base, "predictions": _predicted_vs_actual(outputs, targets, target)}
    if task != "classification":
        return None
    labels = [str(v) for v in target["labels"]]
    n_classes = len(labels)
    probs = M.class_probabilities(outputs, n_classes)
    positives = [1] if n_classes == 2 else list(range(n_classes))
    figures = M.class_figures(M.confusion_matrix(targets, M.predicted_classes(outputs, n_classes), n_classes))
    columns = {name: values.cpu().tolist() for name, values in figures.items()}
    classes = [{"label": label, "precision": columns["precision"][i], "recall": columns["recall"][i],
                "f1": columns["f1"][i], "support": int(columns["support"][i])} for i, label in enumerate(labels)]
    return {**base, "roc": [_roc(probs[:, c], targets == c, labels[c]) for c in positives], "classes": classes}


def _roc(scores: torch.Tensor, positive: torch.Tensor, label: str) -> dict[str, Any]:
    """One ROC curve, thinned to ROC_POINTS, with the AUC of every point (not of the thinned curve); no points
    and no AUC when the held-out rows lack the class or hold nothing else."""
    n_positive = int(positive.sum())
    if n_positive in (0, len(positive)):
        return {"label": label, "fpr": [], "tpr": [], "auc": None}
    fpr, tpr = M.roc_curve(scores, positive)
    keep = M.thin_curve(fpr, tpr, ROC_POINTS)
    auc = float(M.binary_auroc(scores, positive))
    return {"label": label, "fpr": fpr[keep].cpu().tolist(), "tpr": tpr[keep].cpu().tolist(), "auc": auc}


def _predicted_vs_actual(outputs: torch.Tensor, targets: torch.Tensor,
                         target: dict[str, Any]) -> list[dict[str, Any]]:
    """Per target, the same sampled rows' actual and predicted values in the target's units; rows whose
    prediction is not a finite number (a diverged network's) are left out."""
    n = len(targets)
    predicted = decode_regression(outputs.reshape(n, -1).cpu().numpy().astype(np.float64), target)
    actual = decode_regression(targets.reshape(n, -1).cpu().numpy().astype(np.float64), target)
    finite = np.flatnonzero(np.isfinite(predicted).all(axis=1) & np.isfinite(actual).all(axis=1))
    rows = finite[np.unique(np.linspace(0, len(finite) - 1, SAMPLE_POINTS).round().astype(np.intp))] \
        if len(finite) > SAMPLE_POINTS else finite
    return [{"target": name, "actual": _compact(actual[rows, j]), "predicted": _compact(predicted[rows, j])}
            for j, name in enumerate(target["names"])]


def _compact(values: NDArray[np.float64]) -> list[float]:
    """JSON numbers of SIGNIFICANT_DIGITS significant digits."""
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in values.tolist()]


def network_outputs(net: nn.Module, X: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    """Logits (or values) for every row, from a single network or an ensemble's weighted average."""
    if isinstance(net, EnsembleNet):
        return ensemble_outputs(net, X, task, n_classes)
    return forward_chunked(net, X)


def inputs_from_table(table: pa.Table, meta: ModelMeta) -> NDArray[np.float32]:
    return transform(table, meta.preprocessing)


def inputs_from_arrays(inputs: Any, meta: ModelMeta) -> NDArray[np.float32]:
    """Nested arrays shaped like the uploaded X (one per record) → the network's flattened inputs."""
    pre = meta.preprocessing
    try:
        arr = np.asarray(inputs, dtype=np.float64)
    except (ValueError, TypeError):
        raise ingest.DataError(f"inputs must be numeric arrays shaped [n, {', '.join(map(str, pre['shape']))}] "
                          "with every record the same shape") from None
    if arr.ndim >= 1 and list(arr.shape[1:]) != pre["shape"] or arr.ndim == 0 or len(arr) == 0:
        raise ingest.DataError(f"inputs must be shaped [n, {', '.join(map(str, pre['shape']))}]; "
                          f"received {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ingest.DataError("inputs hold NaN or infinite values")
    scale: float = pre["scale"]
    return (arr.reshape(len(arr), -1) * scale).astype(np.float32)


@dataclass
class RawPrediction:
    """A model's answers as arrays: class indices into meta's labels (+ probabilities [n, classes], None for a
    perceptron), or values [n, targets] (regression; an autoencoder's reconstruction error as one column); and,
    when asked of an ensemble, how much its members disagree (per-row arrays)."""

    classes: NDArray[np.integer] | None = None
    probabilities: NDArray[np.float64] | None = None
    values: NDArray[np.float64] | None = None
    spread: dict[str, NDArray[np.float64]] | None = None


def predict_arrays(net: nn.Module, meta: ModelMeta, X: NDArray[np.float32], device: str = "cpu",
                   uncertainty: bool = False) -> RawPrediction:
    """The network's answers for preprocessed inputs, as arrays (batch scoring writes them as columns)."""
    target = meta.target
    task = target["task"]
    n_classes = len(target.get("labels", []))
    Xt = torch.as_tensor(X, device=device)
    with torch.inference_mode():
        out = network_outputs(net, Xt, task, n_classes)
        spread = None
        if uncertainty and isinstance(net, EnsembleNet):
            spread = {k: v.cpu().numpy().astype(np.float64) for k, v in ensemble_spread(net, Xt, task,
                                                                                         n_classes).items()}
            if task == "regression":
                spread["std"] = spread["std"] * np.asarray(target["scale"])
        if task == "classification":
            if meta.model_type == "perceptron":
                # A threshold unit has no probabilities: say so rather than inventing them.
                return RawPrediction(classes=(out[:, 0] > 0).long().cpu().numpy())
            probs = M.class_probabilities(out, n_classes).cpu().numpy().astype(np.float64)
            return RawPrediction(classes=probs.argmax(axis=1), probabilities=probs, spread=spread)
        if task == "autoencoder":
            # An autoencoder's answer per record is its reconstruction error (an anomaly score).
            return RawPrediction(values=((out - Xt) ** 2).mean(dim=1, keepdim=True).cpu().numpy().astype(np.float64))
    return RawPrediction(values=decode_regression(out.cpu().numpy().astype(np.float64), target), spread=spread)


def _uncertainty(raw: RawPrediction, target: dict[str, Any]) -> list[dict[str, Any]] | None:
    if raw.spread is None:
        return None
    if "disagreement" in raw.spread:
        return [{"std": s, "disagreement": d} for s, d in
                zip(raw.spread["std"].tolist(), raw.spread["disagreement"].tolist(), strict=True)]
    std = raw.spread["std"]
    if std.shape[1] == 1:
        return [{"std": v} for v in std[:, 0].tolist()]
    return [{"std": dict(zip(target["names"], row, strict=True))} for row in std.tolist()]


def predict_inputs(net: nn.Module, meta: ModelMeta, X: NDArray[np.float32], device: str = "cpu",
                   uncertainty: bool = False) -> dict[str, Any]:
    """Predictions in the user's label space (and class probabilities) for preprocessed inputs, as JSON values."""
    target = meta.target
    raw = predict_arrays(net, meta, X, device, uncertainty=uncertainty)
    extra = {"uncertainty": _uncertainty(raw, target)} if uncertainty else {}
    if raw.classes is not None:
        # Whole-array conversions, then one dict per row: per-element float() calls cost more than the network
        # on large batches.
        predictions = np.asarray(target["labels"], dtype=object)[raw.classes].tolist()
        if raw.probabilities is None:
            return {"predictions": predictions, "probabilities": None, **extra}
        names = [str(label) for label in target["labels"]]
        return {"predictions": predictions,
                "probabilities": [dict(zip(names, row, strict=True)) for row in raw.probabilities.tolist()], **extra}
    assert raw.values is not None  # an answer without classes has values
    if raw.values.shape[1] == 1:
        return {"predictions": raw.values[:, 0].tolist(), "probabilities": None, **extra}
    return {"predictions": [dict(zip(target["names"], row, strict=True)) for row in raw.values.tolist()],
            "probabilities": None, **extra}


def embed_inputs(net: nn.Sequential, X: NDArray[np.float32], device: str = "cpu") -> list[list[float]]:
    """Bottleneck codes of an autoencoder."""
    with torch.inference_mode():
        codes = forward_chunked(net[0], torch.as_tensor(X, device=device))
    embeddings: list[list[float]] = codes.cpu().numpy().astype(np.float64).tolist()
    return embeddings
