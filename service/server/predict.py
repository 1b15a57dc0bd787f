"""Trained models: lookup, an in-memory cache of loaded networks, and inference."""

import os
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.server import registry
from service.server.auth import Principal, can_see, visible
from service.server.errors import Gone, InvalidInput, NotFound
from service.server.storage import Storage
from service.server.tables import Model
from service.training import ingest
from service.training.artifact import META, WEIGHTS, ModelMeta, load_model
from service.training.features import RecordsError, records_to_table

# torch (and the inference code, `pipeline`) load with the first model this process serves, not with the API.
if TYPE_CHECKING:
    from torch import nn

# How long a cached model is trusted before its folder is looked at again: a model deleted through another API
# process, or whose files were removed by hand, stops answering here within this time.
REVALIDATE_S = 1.0
ZIP_CHUNK_BYTES = 1 << 20


def _gone(model_id: str) -> Gone:
    return Gone(f"model '{model_id}' has no files on the server any more (deleted, or removed from the data "
                "directory and not restored); train it again, or restore its folder models/" + model_id,
                errors=[{"field": "model_id", "message": "the model's files are missing"}])


class ModelCache:
    """Least-recently-used cache of loaded models, shared by the API's worker threads."""

    def __init__(self, storage: Storage, size: int) -> None:
        self.storage = storage
        self.size = size
        self._items: OrderedDict[str, tuple[nn.Module, ModelMeta]] = OrderedDict()
        self._checked: dict[str, float] = {}  # model id -> when its folder was last seen
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

    def _present(self, model_id: str) -> bool:
        return self.storage.model_present(model_id)

    def get(self, model_id: str) -> tuple["nn.Module", ModelMeta]:
        """The loaded model; Gone (410) when its files are missing, also for a copy cached before they went."""
        now = time.monotonic()
        with self._lock:
            item = self._items.get(model_id)
            if item is not None and now - self._checked.get(model_id, 0.0) < REVALIDATE_S:
                self._items.move_to_end(model_id)
                return item
        if not self._present(model_id):
            self.forget(model_id)
            raise _gone(model_id)
        if item is not None:
            with self._lock:
                self._checked[model_id] = now
            return item
        try:
            loaded = load_model(self.storage.model_dir(model_id))
        except FileNotFoundError:
            # The cached folder may have been replaced or evicted while it was read: fetch it once more.
            try:
                loaded = load_model(self.storage.model_dir(model_id))
            except FileNotFoundError:
                raise _gone(model_id) from None
        with self._lock:
            self._items[model_id] = loaded
            self._checked[model_id] = now
            while len(self._items) > self.size:
                evicted, _ = self._items.popitem(last=False)
                self._checked.pop(evicted, None)
        return loaded

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)
            self._checked.pop(model_id, None)
            self._owners.pop(model_id, None)


def files_present(storage: Storage, model: Model) -> Model:
    """The model, or Gone (410) when its folder is missing."""
    if not storage.model_present(model.id):
        raise _gone(model.id)
    return model


class _ZipSink:
    """A write-only, unseekable file for zipfile: what it is given waits in a buffer until taken."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def package(storage: Storage, model: Model) -> Iterator[bytes]:
    """The model's folder (safetensors + JSON) as a zip, built while it is sent: no file is left behind when
    the client goes away mid-download. Both files are opened before the first byte goes out."""
    folder = storage.model_dir(model.id)
    try:
        sources = [(open(folder / WEIGHTS, "rb"), WEIGHTS, zipfile.ZIP_STORED),  # noqa: SIM115 (closed below)
                   (open(folder / META, "rb"), META, zipfile.ZIP_DEFLATED)]  # noqa: SIM115
    except FileNotFoundError:
        raise _gone(model.id) from None

    def chunks() -> Iterator[bytes]:
        sink = _ZipSink()
        try:
            with zipfile.ZipFile(sink, "w") as archive:
                for src, name, method in sources:
                    info = zipfile.ZipInfo(name, date_time=time.localtime(os.fstat(src.fileno()).st_mtime)[:6])
                    info.compress_type = method
                    with archive.open(info, "w", force_zip64=True) as dest:
                        while block := src.read(ZIP_CHUNK_BYTES):
                            dest.write(block)
                            yield sink.take()
            yield sink.take()
        finally:
            for src, _, _ in sources:
                src.close()

    return chunks()


def delete(*, session: Session, cache: ModelCache, model: Model) -> None:
    """Delete a model: its row now, its files and cache entry once the transaction commits (other API
    processes stop serving it within REVALIDATE_S). Conflict while a registry alias points at it."""
    registry.refuse_if_aliased(session=session, model_id=model.id)
    session.delete(model)
    try:
        session.flush()
    except IntegrityError:  # an alias moved onto it since the check: the database refused
        session.rollback()
        registry.refuse_if_aliased(session=session, model_id=model.id)
        raise
    model_id = model.id

    def remove() -> None:
        cache.forget(model_id)  # first: stop serving it even if the files cannot be removed just now
        cache.storage.remove_model(model_id)

    session.info.setdefault("on_commit", []).append(remove)


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
            max_records: int) -> NDArray[np.float32]:
    """The network's input matrix from `records` (tables) or `inputs` (array models), or InvalidInput."""
    from service.training import pipeline as P

    is_array = meta.preprocessing.get("kind") == "array"
    given = inputs if is_array else records
    if given is None and is_array:
        shape = ", ".join(map(str, meta.preprocessing["shape"]))
        raise InvalidInput(f"this model was trained on arrays; send 'inputs' shaped [n, {shape}]",
                           errors=[{"field": "inputs", "message": "field required"}])
    if given is None:
        raise InvalidInput("send 'records': one object per row keyed by column name",
                           errors=[{"field": "records", "message": "field required"}])
    if len(given) > max_records:
        raise InvalidInput(f"{len(given)} records in one request; at most {max_records} are accepted",
                           errors=[{"field": "inputs" if is_array else "records",
                                    "message": f"at most {max_records} records"}])
    try:
        if is_array:
            return P.inputs_from_arrays(given, meta)
        return P.inputs_from_table(records_to_table(given, meta.preprocessing["features"]), meta)
    except RecordsError as exc:
        # One entry per column and kind of fault: `records` the first few at fault, `count` all of them, and
        # `record` only when it is the one.
        raise InvalidInput(str(exc), errors=[
            {"field": "records", "column": f.column, **({"record": f.records[0]} if f.count == 1 else {}),
             "records": f.records, "count": f.count, "message": f.message(exc.n_records)}
            for f in exc.faults]) from None
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
    from service.training import pipeline as P

    return {"model_id": model_id, **P.predict_inputs(net, meta, X, uncertainty=uncertainty)}


def embed(*, cache: ModelCache, model: Model, records: list[dict[str, Any]] | None, inputs: list[Any] | None,
          max_records: int) -> dict[str, Any]:
    """Bottleneck codes of an autoencoder for each record."""
    if model.model_type != "autoencoder":
        raise InvalidInput(f"model '{model.id}' is a {model.model_type}; only autoencoders have embeddings",
                           errors=[{"field": "model_id", "message": "not an autoencoder"}])
    net, meta = cache.get(model.id)
    from torch import nn

    from service.training import pipeline as P

    assert isinstance(net, nn.Sequential)  # build_for makes every autoencoder a Sequential (encoder, decoder)
    X = _inputs(meta, records, inputs, max_records)
    return {"model_id": model.id, "embeddings": P.embed_inputs(net, X)}
