"""Trained models: lookup, an in-memory cache of loaded networks, and inference."""

import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from torch import nn

from service.errors import InvalidInput, NotFound
from service.storage import Storage
from service.tables import Model
from service.training import data as D
from service.training.artifact import load_model
from service.training.pipeline import predict_table


class ModelCache:
    """Least-recently-used cache of loaded models, shared by the API's worker threads."""

    def __init__(self, storage: Storage, size: int) -> None:
        self.storage = storage
        self.size = size
        self._items: OrderedDict[str, tuple[nn.Module, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str) -> tuple[nn.Module, dict[str, Any]]:
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


def get(*, session: Session, model_id: str) -> Model:
    """The model with this id, or NotFound."""
    model = session.get(Model, model_id)
    if model is None:
        raise NotFound(f"no model with id '{model_id}'; GET /models lists them")
    return model


def list_(*, session: Session, limit: int, offset: int) -> tuple[list[Model], int]:
    """A page of models, newest first."""
    total = session.scalar(select(func.count()).select_from(Model))
    rows = session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id).limit(limit)
                           .offset(offset)).all()
    return list(rows), int(total or 0)


def predict(*, cache: ModelCache, model: Model, records: list[dict[str, Any]], max_records: int) -> dict[str, Any]:
    """Predictions for records keyed by column name, in the user's label space."""
    if len(records) > max_records:
        raise InvalidInput(f"{len(records)} records in one request; at most {max_records} are accepted",
                           errors=[{"field": "records", "message": f"at most {max_records} records"}])
    net, meta = cache.get(model.id)
    try:
        table = D.records_to_table(records, meta["preprocessing"]["features"])
    except D.DataError as exc:
        raise InvalidInput(str(exc), errors=[{"field": "records", "column": exc.column,
                                              "message": str(exc)}]) from None
    return {"model_id": model.id, **predict_table(net, meta, table)}
