"""Networks built from the model spec: logistic/softmax regression and the MLP."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


@dataclass(frozen=True)
class NetSpec:
    type: str = "mlp"
    hidden_layers: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetSpec":
        return cls(type=d.get("type", "mlp"), hidden_layers=tuple(d.get("hidden_layers", (64, 64))),
                   activation=d.get("activation", "relu"), dropout=float(d.get("dropout", 0.0)),
                   batch_norm=bool(d.get("batch_norm", False)))


def _init_linear(layer: nn.Linear, activation: str | None) -> None:
    """He initialisation for the ReLU family, Glorot for saturating units."""
    if activation in ("relu", "leaky_relu", "gelu"):
        nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
        nn.init.kaiming_uniform_(layer.weight, nonlinearity=nonlinearity)
    else:
        gain = nn.init.calculate_gain(activation) if activation in ("tanh", "sigmoid") else 1.0
        nn.init.xavier_uniform_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)


def build_network(spec: NetSpec, n_inputs: int, n_outputs: int) -> nn.Sequential:
    """An nn.Sequential from layer sizes: Linear → [BatchNorm] → activation → [Dropout] per hidden layer."""
    if spec.type == "logistic_regression":
        layer = nn.Linear(n_inputs, n_outputs)
        _init_linear(layer, None)
        return nn.Sequential(layer)
    if spec.type != "mlp":
        raise ValueError(f"unknown model type {spec.type!r}")
    sizes = [n_inputs, *spec.hidden_layers]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        linear = nn.Linear(fan_in, fan_out)
        _init_linear(linear, spec.activation)
        layers.append(linear)
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(fan_out))
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
    out = nn.Linear(sizes[-1], n_outputs)
    _init_linear(out, None)
    layers.append(out)
    return nn.Sequential(*layers)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def output_size(task: str, n_classes: int, n_targets: int = 1) -> int:
    """One logit for binary classification (BCE with logits), one per class otherwise."""
    if task == "classification":
        return 1 if n_classes == 2 else n_classes
    return n_targets


def probabilities(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class probabilities [n, n_classes] from the network's logits."""
    if n_classes == 2:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p1, p1], dim=1)
    return torch.softmax(logits, dim=1)
