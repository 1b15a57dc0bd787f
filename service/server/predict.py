"""Trained models: lookup, an in-memory cache of loaded networks, and inference."""

import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from torch import nn

from service.server.auth import Principal, can_see, visible
from service.server.errors import InvalidInput, NotFound
from service.server.storage import Storage
from service.server.tables import Model
from service.training import ingest
from service.training import pipeline as P
from service.training.artifact import META, WEIGHTS, ModelMeta, load_model
from service.training.features import records_to_table


class ModelCache:
    """Least-recently-used cache of loaded models, shared by the API's worker threads."""

    def __init__(self, storage: Storage, size: int) -> None:
        self.storage = storage
        self.size = size
        self._items: OrderedDict[str, tuple[nn.Module, ModelMeta]] = OrderedDict()
        self._owners: dict[str, str] = {}  # model id -> owner; a model never changes hands
        self._lock = threading.Lock()

    def owner(self, model_id: str) -> str | None:
        """The owner of a model looked up before (no I/O), or None."""
        return self._owners.get(model_id)

    def remember_owner(self, model: Model) -> None:
        with self._lock:
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[model.id] = model.owner

    def get(self, model_id: str) -> tuple[nn.Module, ModelMeta]:
        with self._lock:
            if model_id in self._items:
                self._items.move_to_end(model_id)
                return self._items[model_id]
        loaded = load_model(self.storage.model_dir(model_id))
        with self._lock:
            self._items[model_id] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return loaded

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)


def package(storage: Storage, model: Model) -> Path:
    """A temporary zip of the model's folder (safetensors + JSON); the caller removes it."""
    folder = storage.model_dir(model.id)
    path = storage.temp_path(".zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(folder / WEIGHTS, WEIGHTS, compress_type=zipfile.ZIP_STORED)
        archive.write(folder / META, META, compress_type=zipfile.ZIP_DEFLATED)
    return path


def get(*, session: Session, model_id: str, principal: Principal) -> Model:
    """The model with this id, or NotFound (also when it belongs to another owner)."""
    model = session.get(Model, model_id)
    if model is None or not can_see(principal, model.owner):
        raise NotFound(f"no model with id '{model_id}'; GET /models lists them",
                       errors=[{"field": "model_id", "message": "unknown model"}])
    return model


def list_(*, session: Session, principal: Principal, limit: int, offset: int) -> tuple[list[Model], int]:
    """A page of the caller's models (every one for an admin), newest first."""
    query = visible(select(Model), Model, principal)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Model.created_at.desc(), Model.id).limit(limit)
                           .offset(offset)).all()
    return list(rows), int(total or 0)


def _inputs(meta: ModelMeta, records: list[dict[str, Any]] | None, inputs: list[Any] | None,
            max_records: int) -> np.ndarray:
    """The network's input matrix from `records` (tables) or `inputs` (array models), or InvalidInput."""
    is_array = meta.preprocessing.get("kind") == "array"
    if is_array and inputs is None:
        shape = ", ".join(map(str, meta.preprocessing["shape"]))
        raise InvalidInput(f"this model was trained on arrays; send 'inputs' shaped [n, {shape}]",
                           errors=[{"field": "inputs", "message": "field required"}])
    if not is_array and records is None:
        raise InvalidInput("send 'records': one object per row keyed by column name",
                           errors=[{"field": "records", "message": "field required"}])
    given = inputs if is_array else records
    if len(given) > max_records:
        raise InvalidInput(f"{len(given)} records in one request; at most {max_records} are accepted",
                           errors=[{"field": "inputs" if is_array else "records",
                                    "message": f"at most {max_records} records"}])
    try:
        if is_array:
            return P.inputs_from_arrays(inputs, meta)
        return P.inputs_from_table(records_to_table(records, meta.preprocessing["features"]), meta)
    except ingest.DataError as exc:
        raise InvalidInput(str(exc), errors=[{"field": "inputs" if is_array else "records", "column": exc.column,
                                              "message": str(exc)}]) from None


def predict(*, cache: ModelCache, model_id: str, records: list[dict[str, Any]] | None, inputs: list[Any] | None,
            max_records: int, uncertainty: bool = False) -> dict[str, Any]:
    """Predictions in the user's label space for records keyed by column name (or arrays); with `uncertainty`,
    an ensemble's member spread per record."""
    net, meta = cache.get(model_id)
    if uncertainty and meta.model_type != "ensemble":
        raise InvalidInput(f"model '{model_id}' is a single {meta.model_type}; uncertainty comes from an "
                           "ensemble's members (train with model type 'ensemble', the default)",
                           errors=[{"field": "uncertainty", "message": "needs an ensemble"}])
    X = _inputs(meta, records, inputs, max_records)
    return {"model_id": model_id, **P.predict_inputs(net, meta, X, uncertainty=uncertainty)}


def embed(*, cache: ModelCache, model: Model, records: list[dict[str, Any]] | None, inputs: list[Any] | None,
          max_records: int) -> dict[str, Any]:
    """Bottleneck codes of an autoencoder for each record."""
    if model.model_type != "autoencoder":
        raise InvalidInput(f"model '{model.id}' is a {model.model_type}; only autoencoders have embeddings",
                           errors=[{"field": "model_id", "message": "not an autoencoder"}])
    net, meta = cache.get(model.id)
    X = _inputs(meta, records, inputs, max_records)
    return {"model_id": model.id, "embeddings": P.embed_inputs(net, X)}
