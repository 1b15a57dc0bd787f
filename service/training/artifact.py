"""A model is a folder: weights in safetensors + one JSON document. Nothing is ever unpickled."""

import json
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
