"""From a table and a spec to arrays ready for training, and from records back to predictions."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from service.training import data as D
from service.training.loop import TrainData, forward_chunked
from service.training.nets import probabilities


@dataclass
class Prepared:
    data: TrainData
    preprocessing: dict[str, Any]
    target: dict[str, Any]
    info: dict[str, Any]


def prepare(table: pa.Table, *, target: str, features: list[str], kinds: dict[str, str], task: str,
            validation_fraction: float, seed: int) -> Prepared:
    """Drop rows without a target, split (stratified for classes), fit preprocessing on the training rows."""
    target_params = D.fit_target(table.column(target), task)
    y_all = D.encode_target(table.column(target), target_params)
    keep = (y_all >= 0) if task == "classification" else ~np.isnan(y_all)
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise D.DataError(f"target '{target}' has no values", column=target)
    table, y_all = table.filter(pa.array(keep)), y_all[keep]
    if task == "classification" and len(target_params["labels"]) < 2:
        raise D.DataError(f"target '{target}' has only one class ({target_params['labels'][0]!r}); "
                          "classification needs at least two", column=target)
    split = D.split_rows(table.num_rows, validation_fraction, seed,
                         strata=y_all if task == "classification" else None)
    train_table = table.take(pa.array(split.train))
    pre = D.fit_preprocessing(train_table, features, kinds)
    X_train = D.transform(train_table, pre)
    X_val = D.transform(table.take(pa.array(split.validation)), pre)
    data = TrainData(
        task=task, X_train=X_train, y_train=y_all[split.train].astype(np.float32 if task == "regression" else np.int64),
        X_val=X_val, y_val=y_all[split.validation].astype(np.float32 if task == "regression" else np.int64),
        n_classes=len(target_params.get("labels", [])), target_scale=target_params.get("scale", 1.0),
    )
    info = {"n_train": int(len(split.train)), "n_validation": int(len(split.validation)),
            "n_rows_without_target": n_dropped, "n_inputs": int(pre["n_inputs"])}
    return Prepared(data=data, preprocessing=pre, target=target_params, info=info)


def predict_table(net: nn.Module, meta: dict[str, Any], table: pa.Table, device: str = "cpu") -> dict[str, Any]:
    """Predictions in the user's label space (and class probabilities) for the rows of `table`."""
    X = torch.as_tensor(D.transform(table, meta["preprocessing"]), device=device)
    target = meta["target"]
    with torch.inference_mode():
        out = forward_chunked(net, X)
        if target["task"] == "classification":
            labels = target["labels"]
            probs = probabilities(out, len(labels)).cpu().numpy()
            best = probs.argmax(axis=1)
            return {
                "predictions": [labels[i] for i in best],
                "probabilities": [{str(label): float(p) for label, p in zip(labels, row, strict=True)}
                                  for row in probs],
            }
    values = D.decode_regression(out.cpu().numpy().astype(np.float64), target)
    return {"predictions": [float(v) for v in values[:, 0]] if values.shape[1] == 1 else values.tolist(),
            "probabilities": None}
