"""A model is a folder: weights in safetensors + one JSON document. Nothing is ever unpickled."""

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow
import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import service
from service.training.nets import NetSpec, build_network

WEIGHTS = "weights.safetensors"
META = "model.json"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pyarrow": pyarrow.__version__, "safetensors": safetensors.__version__,
            "mlp_service": service.__version__}


def save_model(folder: Path, net: nn.Module, meta: dict[str, Any]) -> int:
    """Write weights and metadata into `folder` (which must not exist yet); returns the bytes written."""
    folder.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(state, folder / WEIGHTS)
    doc = {"format_version": FORMAT_VERSION, "versions": library_versions(), **meta}
    (folder / META).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return sum(p.stat().st_size for p in folder.iterdir())


def load_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META).read_text())


def load_model(folder: Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from the JSON spec and fill it from the safetensors weights."""
    meta = load_meta(folder)
    net = build_network(NetSpec.from_dict(meta["spec"]["model"]), meta["n_inputs"], meta["n_outputs"])
    net.load_state_dict(load_file(folder / WEIGHTS, device=device))
    net.to(device).eval()
    return net, meta


# ---------------------------------------------------------------- checkpoints

_TENSOR, _ITEMS = "__tensor__", "__items__"


def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Replace every tensor in a nested structure by a reference, collecting the tensors."""
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


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
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
