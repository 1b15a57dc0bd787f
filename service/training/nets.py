"""Networks built from the model spec: logistic/softmax regression and the MLP."""

from dataclasses import dataclass
from typing import Any

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}


@dataclass(frozen=True)
class NetSpec:
    type: str = "mlp"
    hidden_layers: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    dropout: float = 0.1
    batch_norm: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetSpec":
        return cls(type=d.get("type", "mlp"), hidden_layers=tuple(d.get("hidden_layers", (64, 64))),
                   activation=d.get("activation", "relu"), dropout=float(d.get("dropout", 0.1)),
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
    if spec.type in ("logistic_regression", "perceptron"):
        # One unit (or one per class): the perceptron's weights start at 0 and are set by its own rule.
        layer = nn.Linear(n_inputs, n_outputs)
        if spec.type == "perceptron":
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        else:
            _init_linear(layer, None)
        return nn.Sequential(layer)
    if spec.type == "autoencoder":
        # Encoder n_inputs → hidden_layers (the last is the bottleneck), decoder mirrors it back.
        encoder = _stack([n_inputs, *spec.hidden_layers], spec, activate_last=False)
        decoder = _stack([*reversed(spec.hidden_layers), n_inputs], spec, activate_last=False)
        return nn.Sequential(encoder, decoder)
    if spec.type != "mlp":
        raise ValueError(f"unknown model type {spec.type!r}")
    return _stack([n_inputs, *spec.hidden_layers, n_outputs], spec, activate_last=False)


def _stack(sizes: list[int], spec: NetSpec, *, activate_last: bool) -> nn.Sequential:
    """Linear layers between consecutive sizes; hidden ones get [BatchNorm] → activation → [Dropout]."""
    layers: list[nn.Module] = []
    pairs = list(zip(sizes, sizes[1:], strict=False))
    for i, (fan_in, fan_out) in enumerate(pairs):
        last = i == len(pairs) - 1
        linear = nn.Linear(fan_in, fan_out)
        _init_linear(linear, None if last and not activate_last else spec.activation)
        layers.append(linear)
        if not last or activate_last:
            layers.extend(_after(fan_out, spec))
    return nn.Sequential(*layers)


def _after(width: int, spec: NetSpec) -> list[nn.Module]:
    out: list[nn.Module] = []
    if spec.batch_norm:
        out.append(nn.BatchNorm1d(width))
    out.append(ACTIVATIONS[spec.activation]())
    if spec.dropout > 0:
        out.append(nn.Dropout(spec.dropout))
    return out


def encoder_of(net: nn.Sequential) -> nn.Module:
    """The encoder half of an autoencoder built by build_network."""
    return net[0]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
