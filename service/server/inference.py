"""Models in the ecosystem's formats: ONNX export, and the Open Inference Protocol (KServe v2 REST): metadata,
infer requests (JSON tensors or the binary tensor extension) in, tensors out.

An infer request's tensors become the table `/predict` builds from records and go through the same preprocessing
and network (`pipeline.inputs_from_table`, `pipeline.predict_arrays`), so both answer the same numbers.
"""

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.server import predict, registry
from service.server.auth import Principal, can_see
from service.server.db import SchemaNotReady, require_schema_at_head
from service.server.errors import InvalidInput, NotFound
from service.server.predict import ModelCache
from service.server.tables import Model
from service.training import dates, ingest
from service.training.artifact import ModelMeta
from service.training.ingest import quote_value

# The exporter and the inference code import torch (and onnx): loaded with the first model this process serves.
if TYPE_CHECKING:
    from service.training import pipeline as P
    from service.training.onnx_export import TensorInfo

SERVER_NAME = "mlp-service"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "mlp_service"
VERSION = "1"  # a model id names one immutable model: its only version
HEADER_LENGTH = "Inference-Header-Content-Length"

# The protocol's datatypes as numpy reads them (little-endian, row-major); BF16 has no numpy type.
DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(t) for name, t in (
    ("BOOL", "?"), ("UINT8", "<u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"), ("INT8", "<i1"),
    ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"))}
NUMBERS = [name for name in DTYPES if name != "BOOL"]
DATATYPES = [*DTYPES, "BYTES"]


# ---------------------------------------------------------------- ONNX


def export(*, cache: ModelCache, model: Model) -> bytes:
    """The model as one self-contained .onnx file; InvalidInput when it holds a layer the exporter lacks."""
    from service.training.onnx_export import ExportError, export_onnx

    net, meta = cache.get(model.id)
    try:
        return export_onnx(net, meta)
    except ExportError as exc:
        raise InvalidInput(f"model '{model.id}' cannot be exported as ONNX: {exc}",
                           errors=[{"field": "model_id", "message": str(exc)}]) from None


# ---------------------------------------------------------------- health and metadata


def not_ready(engine: Engine) -> str | None:
    """Why inference cannot be served now (the database, which holds keys and owners, unreachable or not
    migrated), or None. Training needs more (a worker): that is /readyz."""
    try:
        require_schema_at_head(engine)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SchemaNotReady as exc:
        return str(exc)
    except Exception as exc:
        return f"database unavailable ({type(exc).__name__}: {str(exc)[:200]})"
    return None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """GET /v2/models/{name}: the inputs (one per feature column) and outputs of the model."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def protocol_outputs(meta: ModelMeta) -> list["TensorInfo"]:
    """The outputs an infer request can ask for: the ONNX graph's, with probabilities as float64 (as `/predict`
    computes them)."""
    from service.training.onnx_export import PROBABILITIES, TensorInfo, output_tensors

    return [TensorInfo(t.name, "FP64", t.shape) if t.name == PROBABILITIES else t for t in output_tensors(meta)]


def resolve(*, sessions: sessionmaker[Session], cache: ModelCache, principal: Principal, name: str,
            version: str | None = None) -> str:
    """The id of the model a protocol path names: a model id (its one version is "1"), 'name@alias' or 'name:N'
    of the registry, or a registered name with the path's version; NotFound naming what exists. A model id seen
    before is checked against the cache's owner map, without the database (as /predict does)."""
    if version is None:
        owner = cache.owner(name)
        if owner is not None and can_see(principal, owner):
            return name
    with sessions() as session:
        ref = name
        if version is not None:
            model = session.get(Model, name)
            if model is not None and can_see(principal, model.owner):
                if version != VERSION:
                    raise NotFound(f"model '{name}' has no version '{version}'; a model id has one version, "
                                   f"'{VERSION}' (registered names have theirs: name:N)")
            else:
                ref = f"{name}:{version}"
        model_id = registry.resolve_model_id(session, principal, ref, field="model_name")
        cache.remember_owner(predict.get(session=session, model_id=model_id, principal=principal))
    return model_id


def metadata(*, cache: ModelCache, model_id: str, name: str, version: str | None) -> ModelMetadata:
    """The inputs and outputs of the model `name` (`version`) resolved to (Gone when its files are missing)."""
    from service.training.onnx_export import input_tensors

    _, meta = cache.get(model_id)
    return ModelMetadata(name=name, versions=[version or VERSION], platform=PLATFORM,
                         inputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))
                                 for t in input_tensors(meta)],
                         outputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))
                                  for t in protocol_outputs(meta)])


# ---------------------------------------------------------------- infer requests


class _Loose(BaseModel):
    # The protocol lets requests carry fields it does not name (and `parameters` of any kind): they are ignored.
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Loose):
    name: str = Field(min_length=1)
    shape: list[int] = Field(min_length=1)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Loose):
    name: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Loose):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class BadRequest(InvalidInput):
    """An infer request the protocol refuses: 400, naming the input or output at fault."""

    status, slug, title = 400, "bad-request", "Bad request"


def _bad(message: str, field: str = "inputs") -> BadRequest:
    return BadRequest(message, errors=[{"field": field, "message": message}])


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON part as an InferRequest, and the binary tensor data that follows it (when the
    Inference-Header-Content-Length header says where the JSON ends)."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise _bad(f"the {HEADER_LENGTH} header ({header_length!r}) must be the byte length of the JSON part "
                       f"of the body (0 to {len(body)})", "body")
        body, binary = body[:size], body[size:]
    try:
        doc = json.loads(body)
    except RecursionError:
        raise _bad("the request's JSON is nested too deeply; a tensor's data is a flat or [N, 1] list",
                   "body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"the request is not JSON ({exc}); send {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", "
                   "\"data\"}]}", "body") from None
    try:
        return InferRequest.model_validate(doc), binary
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        where = ".".join(map(str, loc)) or "body"
        if len(loc) >= 2 and loc[0] in ("inputs", "outputs") and isinstance(doc, dict):
            # name the tensor, not only its index
            try:
                name = doc[loc[0]][loc[1]].get("name")
            except (AttributeError, IndexError, KeyError, TypeError):
                name = None
            if isinstance(name, str):
                where = f"{loc[0][:-1]} '{name}': {'.'.join(map(str, loc[2:])) or 'tensor'}"
        raise _bad(f"{where}: {err['msg']}", str(loc[0]) if loc else "body") from None


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: NDArray[Any]  # flat, row-major: numbers of the datatype, or Python str for BYTES


def _bytes_elements(raw: bytes, name: str) -> list[str]:
    """BYTES in the binary extension: each element a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise _bad(f"input '{name}': its BYTES data end inside an element's 4-byte length")
        size = int.from_bytes(raw[at:at + 4], "little")
        if at + 4 + size > len(raw):
            raise _bad(f"input '{name}': an element of its BYTES data claims {size} bytes past the data's end")
        try:
            out.append(raw[at + 4:at + 4 + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(f"input '{name}': element {len(out)} of its BYTES data is not UTF-8 text") from None
        at += 4 + size
    return out


def _flatten(data: Any) -> list[Any]:
    """Nested lists' leaves in row-major order (a loop: no recursion limit to hit)."""
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _json_values(t: InputTensor, count: int) -> NDArray[Any]:
    values = _flatten(t.data)
    if len(values) != count:
        raise _bad(f"input '{t.name}': shape {t.shape} holds {count} element(s); its data have {len(values)}")
    if t.datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise _bad(f"input '{t.name}': BYTES data must be JSON strings")
        return np.array(values, dtype=object)
    if t.datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise _bad(f"input '{t.name}': BOOL data must be true or false")
        return np.array(values, dtype=bool)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _bad(f"input '{t.name}': {t.datatype} data must be JSON numbers")
    dtype = DTYPES[t.datatype]
    if dtype.kind in "iu" and not all(isinstance(v, int) for v in values):
        raise _bad(f"input '{t.name}': {t.datatype} data must be whole JSON numbers")
    try:
        # floats rounded to their datatype, as binary FP32 data arrive: one answer for either encoding
        array = np.array(values, dtype=np.float64).astype(dtype) if dtype.kind == "f" else np.array(values, dtype)
    except OverflowError:
        raise _bad(f"input '{t.name}': a value is out of range for {t.datatype}") from None
    return array


def decode_inputs(request: InferRequest, binary: bytes) -> list[Tensor]:
    """Every input's values (from its JSON `data` or its slice of the binary part), checked against its shape and
    datatype."""
    tensors, at = [], 0
    for t in request.inputs:
        if t.datatype not in DATATYPES:
            raise _bad(f"input '{t.name}': datatype {t.datatype!r} is not one of {DATATYPES}")
        if any(d < 0 for d in t.shape):
            raise _bad(f"input '{t.name}': shape {t.shape} has a negative dimension")
        count = int(np.prod(t.shape))
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if t.data is not None:
                raise _bad(f"input '{t.name}' has both JSON data and binary_data_size; send one")
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise _bad(f"input '{t.name}': binary_data_size {size!r} is past the end of the binary data "
                           f"({len(binary) - at} bytes left)")
            raw, at = binary[at:at + size], at + size
            if t.datatype == "BYTES":
                values: NDArray[Any] = np.array(_bytes_elements(raw, t.name), dtype=object)
            else:
                dtype = DTYPES[t.datatype]
                if size != count * dtype.itemsize:
                    raise _bad(f"input '{t.name}': shape {t.shape} of {t.datatype} takes {count * dtype.itemsize} "
                               f"bytes; binary_data_size is {size}")
                values = np.frombuffer(raw, dtype=dtype)
            if len(values) != count:
                raise _bad(f"input '{t.name}': shape {t.shape} holds {count} element(s); its data have "
                           f"{len(values)}")
        elif t.data is None:
            raise _bad(f"input '{t.name}' has no data: send 'data' or, with the binary extension, "
                       "parameters.binary_data_size")
        else:
            values = _json_values(t, count)
        tensors.append(Tensor(t.name, t.datatype, t.shape, values))
    if at != len(binary):
        raise _bad(f"the binary data hold {len(binary) - at} byte(s) that no input's binary_data_size accounts for",
                   "body")
    return tensors


def _by_name(tensors: list[Tensor], expected: list[str]) -> dict[str, Tensor]:
    names = [t.name for t in tensors]
    for name in names:
        if names.count(name) > 1:
            raise _bad(f"input '{name}' is sent twice")
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise _bad(f"unknown input '{unknown[0]}'; this model's inputs: {', '.join(expected)}")
    missing = [n for n in expected if n not in names]
    if missing:
        raise _bad(f"input '{missing[0]}' is missing; this model's inputs: {', '.join(expected)}")
    return {t.name: t for t in tensors}


def _batch(t: Tensor, max_records: int) -> int:
    """Rows of a feature column's tensor: shaped [N] or [N, 1]."""
    if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
        raise _bad(f"input '{t.name}': shape {t.shape}; a feature column is shaped [N] or [N, 1]")
    n = t.shape[0]
    if not 1 <= n <= max_records:
        raise _bad(f"input '{t.name}': {n} rows; send 1 to {max_records} per request")
    return n


def _column(t: Tensor, feature: dict[str, Any]) -> pa.Array:
    """A feature column as `records_to_table` types it; NaN (or infinity) and "" are missing values."""
    if feature["kind"] == "categorical":
        if t.datatype != "BYTES":
            raise _bad(f"input '{t.name}' is a categorical column: send BYTES (its levels as strings), not "
                       f"{t.datatype}")
        return pa.array([v or None for v in t.values.tolist()], pa.string())
    if feature["kind"] == "datetime":
        if t.datatype != "BYTES":
            raise _bad(f"input '{t.name}' is a date column: send BYTES (dates as text), not {t.datatype}")
        text = pa.array([v or None for v in t.values.tolist()], pa.string())
        unread = np.isnan(dates.parse(text, feature["layout"])) & pc.is_valid(text).to_numpy(zero_copy_only=False)
        if unread.any():
            i = int(np.nonzero(unread)[0][0])
            raise _bad(f"input '{t.name}': element {i} ({quote_value(text[i].as_py())}) is not a date like "
                       f"'{dates.example_value(feature['layout'])}' ({dates.describe(feature['layout'])})")
        return text
    if t.datatype == "BYTES":
        raise _bad(f"input '{t.name}' is a {feature['kind']} column: send one of {NUMBERS}"
                   + (" or BOOL" if feature["kind"] == "boolean" else "") + ", not BYTES")
    if t.datatype == "BOOL" and feature["kind"] != "boolean":
        raise _bad(f"input '{t.name}' is a numeric column: send one of {NUMBERS}, not BOOL")
    values = t.values.astype(np.float64)
    if feature["kind"] == "boolean" and not np.isin(values[np.isfinite(values)], (0.0, 1.0)).all():
        raise _bad(f"input '{t.name}' is a boolean column: send BOOL, or numbers 0 and 1 (NaN for missing)")
    return pa.array(values)


def network_inputs(tensors: list[Tensor], meta: ModelMeta, max_records: int) -> NDArray[np.float32]:
    """The network's input matrix from the request's tensors, as /predict makes it from records."""
    from service.training import pipeline as P
    from service.training.onnx_export import ARRAY_INPUT, input_tensors

    pre = meta.preprocessing
    expected = [t.name for t in input_tensors(meta)]
    by_name = _by_name(tensors, expected)
    if pre.get("kind") == "array":
        t = by_name[ARRAY_INPUT]
        want = [int(d) for d in pre["shape"]]
        if t.shape[1:] != want or not 1 <= t.shape[0] <= max_records:
            raise _bad(f"input '{t.name}': shape {t.shape}; this model takes [N, {', '.join(map(str, want))}] "
                       f"with N from 1 to {max_records}")
        if t.datatype == "BYTES":
            raise _bad(f"input '{t.name}': send one of {NUMBERS}, not BYTES")
        try:
            return P.inputs_from_arrays(t.values.astype(np.float64).reshape(t.shape), meta)
        except ingest.DataError as exc:
            raise _bad(f"input '{t.name}': {exc}") from None
    rows = {name: _batch(t, max_records) for name, t in by_name.items()}
    if len(set(rows.values())) > 1:
        raise _bad("the inputs disagree on the number of rows: "
                   + ", ".join(f"'{name}' has {n}" for name, n in rows.items()))
    table = pa.table({f["name"]: _column(by_name[f["name"]], f) for f in pre["features"]})
    return P.inputs_from_table(table, meta)


# ---------------------------------------------------------------- infer responses


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: NDArray[Any]
    binary: bool


def _outputs(raw: "P.RawPrediction", meta: ModelMeta) -> dict[str, tuple[str, NDArray[Any]]]:
    """Every output the model answers: name → (datatype, array)."""
    from service.training.onnx_export import PREDICTIONS, PROBABILITIES, label_datatype

    target = meta.target
    if raw.classes is not None:
        labels = target["labels"]
        kind = label_datatype(labels)
        table = np.asarray(labels if kind != "BYTES" else [str(v) for v in labels],
                           dtype={"BOOL": bool, "INT64": np.int64}.get(kind, object))
        out = {PREDICTIONS: (kind, table[raw.classes])}
        if raw.probabilities is not None:
            out[PROBABILITIES] = ("FP64", raw.probabilities)
        return out
    assert raw.values is not None  # an answer without classes has values
    return {PREDICTIONS: ("FP64", raw.values)}


def _wanted(request: InferRequest, available: dict[str, tuple[str, NDArray[Any]]]) -> list[OutputTensor]:
    default_binary = request.parameters.get("binary_data_output") is True
    asked = request.outputs if request.outputs is not None else [RequestedOutput(name=n) for n in available]
    out = []
    for o in asked:
        if o.name not in available:
            raise _bad(f"unknown output '{o.name}'; this model's outputs: {', '.join(available)}", "outputs")
        datatype, values = available[o.name]
        binary = o.parameters.get("binary_data", default_binary) is True
        out.append(OutputTensor(o.name, datatype, list(values.shape), values, binary))
    return out


def _binary(t: OutputTensor) -> bytes:
    if t.datatype == "BYTES":
        parts = [s.encode("utf-8") for s in t.values.ravel().tolist()]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.ascontiguousarray(t.values, dtype=DTYPES[t.datatype]).tobytes()


@dataclass
class InferResponse:
    """The answer's bytes: JSON alone, or JSON followed by binary outputs (`header_length` set)."""

    body: bytes
    header_length: int | None
    media_type: Literal["application/json", "application/octet-stream"]


def encode_response(name: str, version: str | None, request: InferRequest,
                    outputs: list[OutputTensor]) -> InferResponse:
    doc: dict[str, Any] = {"model_name": name, "model_version": version or VERSION, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    buffers = []
    for t in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.binary:
            buffers.append(_binary(t))
            entry["parameters"] = {"binary_data_size": len(buffers[-1])}
        else:
            entry["data"] = t.values.ravel().tolist()
        doc["outputs"].append(entry)
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not buffers:
        return InferResponse(head, None, "application/json")
    return InferResponse(head + b"".join(buffers), len(head), "application/octet-stream")


def infer(*, cache: ModelCache, model_id: str, name: str, version: str | None, body: bytes,
          header_length: str | None, max_records: int) -> InferResponse:
    """One infer request on the model `name` (`version`) resolved to, which the caller may use: the same
    preprocessing and network as /predict."""
    from service.training import pipeline as P

    request, binary = parse_request(body, header_length)
    tensors = decode_inputs(request, binary)
    net, meta = cache.get(model_id)
    X = network_inputs(tensors, meta, max_records)
    raw = P.predict_arrays(net, meta, X)
    return encode_response(name, version, request, _wanted(request, _outputs(raw, meta)))
