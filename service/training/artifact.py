"""A model is a folder: weights in safetensors + one JSON document. Nothing is ever unpickled."""

import json
import os
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow
import safetensors
from pydantic import BaseModel, ConfigDict, Field

import service

# torch is imported where weights are read or written, not with this module: the API reads model metadata
# without loading torch, which it needs only once it serves a model.
if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = "weights.safetensors"
META = "model.json"
FORMAT_VERSION = 2


def library_versions() -> dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pyarrow": pyarrow.__version__, "safetensors": safetensors.__version__,
            "mlp_service": service.__version__}


class ModelMeta(BaseModel):
    """model.json: everything needed to rebuild the network and use it, beside the safetensors weights."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format_version: int = FORMAT_VERSION
    versions: dict[str, str] = Field(default_factory=library_versions)
    model_id: str | None = None
    job_id: str | None = None
    dataset_id: str | None = None
    spec: dict[str, Any]  # the job's resolved spec (service.server.spec.StoredSpec as JSON)
    task: str
    target_columns: list[str] = Field(default_factory=list)
    features: list[dict[str, Any]] = Field(default_factory=list)  # the feature schema shown with the model
    preprocessing: dict[str, Any]
    target: dict[str, Any]
    n_inputs: int
    n_outputs: int
    metrics: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    ensemble: dict[str, Any] | None = None  # members kept, their weights and hyperparameters

    @property
    def model(self) -> SimpleNamespace:
        """The resolved model spec, with attributes (type, hidden_layers, members, ...)."""
        return SimpleNamespace(**{**_MODEL_DEFAULTS_V1, **self.spec["model"]})

    @property
    def model_type(self) -> str:
        model_type: str = self.model.type
        return model_type

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# Format 1 (before ensembles) stored the single networks' model spec with every field filled; these fill in
# what an older file may lack.
_MODEL_DEFAULTS_V1 = {"type": "mlp", "hidden_layers": [64, 64], "activation": "relu", "dropout": 0.1,
                      "batch_norm": False, "members": None, "linear_skip": None}


def read_meta(doc: dict[str, Any]) -> ModelMeta:
    """model.json of any format version as today's type."""
    version = int(doc.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise ValueError(f"model format {version} is newer than this server reads ({FORMAT_VERSION}); upgrade it")
    return ModelMeta.model_validate({**doc, "format_version": FORMAT_VERSION})


def save_model(folder: Path, net: "nn.Module", meta: ModelMeta) -> int:
    """Write weights and metadata into `folder` (which must not exist yet); returns the bytes written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(state, folder / WEIGHTS)
    (folder / META).write_text(meta.to_json())
    return sum(p.stat().st_size for p in folder.iterdir())


def load_meta(folder: Path) -> ModelMeta:
    return read_meta(json.loads((folder / META).read_text()))


def load_model(folder: Path, device: str = "cpu") -> tuple["nn.Module", ModelMeta]:
    """Rebuild the network from the JSON spec and fill it from the safetensors weights."""
    from safetensors.torch import load_file

    from service.training.nets import build_for

    meta = load_meta(folder)
    model = meta.model
    if model.type == "ensemble":
        if meta.ensemble is None:
            raise ValueError(f"{folder / META} describes an ensemble without its kept members")
        model.members = int(meta.ensemble["members"])  # the kept members, after selection
    net = build_for(model, meta.n_inputs, meta.n_outputs)
    net.load_state_dict(load_file(folder / WEIGHTS, device=device))
    net.to(device).eval()
    return net, meta


# ---------------------------------------------------------------- checkpoints

_TENSOR, _ITEMS = "__tensor__", "__items__"


def _split(obj: Any, tensors: dict[str, "torch.Tensor"], path: str) -> Any:
    """Replace every tensor in a nested structure by a reference, collecting the tensors."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {_ITEMS: [[k, _split(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path}")


def _join(obj: Any, tensors: dict[str, "torch.Tensor"]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_ITEMS}:
            return {k: _join(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_checkpoint(folder: Path, name: str, state: Any, extra: dict[str, Any]) -> None:
    """Write `state` (a dataclass of tensors and plain values) as NAME.safetensors + NAME.json, atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(dict(state.__dict__), tensors, "s")
    tmp_weights, tmp_meta = folder / f".{name}.safetensors.tmp", folder / f".{name}.json.tmp"
    save_file(tensors, tmp_weights)
    tmp_meta.write_text(json.dumps({"format_version": FORMAT_VERSION, "state": skeleton, **extra}))
    os.replace(tmp_weights, folder / f"{name}.safetensors")
    os.replace(tmp_meta, folder / f"{name}.json")


def load_checkpoint(folder: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state fields, extra) of a checkpoint written by save_checkpoint."""
    from safetensors.torch import load_file

    doc = json.loads((folder / f"{name}.json").read_text())
    tensors = load_file(folder / f"{name}.safetensors")
    state = _join(doc.pop("state"), tensors)
    doc.pop("format_version", None)
    return state, doc


def prune_checkpoints(folder: Path, keep: str) -> None:
    """Remove every checkpoint in `folder` but `keep`."""
    for path in folder.glob("*"):
        if path.name not in (f"{keep}.safetensors", f"{keep}.json"):
            path.unlink(missing_ok=True)
