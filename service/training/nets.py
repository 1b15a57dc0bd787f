"""Networks built from the model spec: logistic/softmax regression, the MLP, the autoencoder, the batched ensemble."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from service.training.tasks import output_width as output_width  # torch-free, shared with the API

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
    match activation:
        case "relu" | "gelu":
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        case "leaky_relu":
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="leaky_relu")
        case "tanh" | "sigmoid":
            nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain(activation))
        case _:
            nn.init.xavier_uniform_(layer.weight, gain=1.0)
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


# ---------------------------------------------------------------- batched ensembles


class BatchedLinear(nn.Module):
    """K independent linear layers in one tensor: weight [K, in, out], bias [K, 1, out].

    A [B, in] input (the same rows for every member) is one matrix product against all members' weights side by
    side; a [K, B, in] input (each member's own activations) is one `baddbmm`. `member(k)` is the plain
    `nn.Linear` that member k is equivalent to.
    """

    def __init__(self, members: int, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, fan_out))

    def init_like(self, activation: str | None, *, zero: bool = False) -> None:
        """Each member initialised exactly as `_init_linear` initialises an nn.Linear, one after another."""
        with torch.no_grad():
            for k in range(self.weight.shape[0]):
                layer = nn.Linear(self.weight.shape[1], self.weight.shape[2])
                if zero:
                    nn.init.zeros_(layer.weight)
                else:
                    _init_linear(layer, activation)
                self.weight[k].copy_(layer.weight.T)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            k, fan_in, fan_out = self.weight.shape
            flat = self.weight.transpose(0, 1).reshape(fan_in, k * fan_out)
            return (x @ flat).view(len(x), k, fan_out).transpose(0, 1) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)

    def member(self, k: int) -> nn.Linear:
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[2])
        with torch.no_grad():
            layer.weight.copy_(self.weight[k].T)
            layer.bias.copy_(self.bias[k, 0])
        return layer


class EnsembleNet(nn.Module):
    """K member MLPs trained as one network: [B, in] → [K, B, out] (each member's outputs for every row).

    Member k is Linear → activation → dropout(p_k) per hidden layer, then a linear output, plus (with
    `linear_skip`) a linear path from the inputs straight to the outputs, so that near-linear data is not lost to
    an MLP that overfits. `dropout` holds each member's own rate; `member_weights` the weights of the ensemble's
    average (set by member selection; uniform before).
    """

    # Buffers (registered in __init__, replaced by keep()), declared here so that their type is known.
    dropout: torch.Tensor
    member_weights: torch.Tensor

    def __init__(self, n_inputs: int, n_outputs: int, members: int, hidden_layers: tuple[int, ...],
                 activation: str = "relu", linear_skip: bool = True) -> None:
        super().__init__()
        sizes = [n_inputs, *hidden_layers, n_outputs]
        layers = [BatchedLinear(members, a, b) for a, b in zip(sizes, sizes[1:], strict=False)]
        self.layers = nn.ModuleList(layers)
        for i, layer in enumerate(layers):
            layer.init_like(None if i == len(layers) - 1 else activation)
        self.skip = BatchedLinear(members, n_inputs, n_outputs) if linear_skip else None
        if self.skip is not None:
            self.skip.init_like(None, zero=True)  # starts as the plain MLP; grows where the data is linear
        self.activation = ACTIVATIONS[activation]()
        self.register_buffer("dropout", torch.zeros(members))
        self.register_buffer("member_weights", torch.full((members,), 1.0 / members))

    @property
    def members(self) -> int:
        return int(self.dropout.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.layers) - 1
        # the rates and their complements once per pass, not per layer (a tiny step is mostly such small ops)
        p = self.dropout.view(-1, 1, 1) if self.training and bool((self.dropout > 0).any()) else None
        kept = 1 - p if p is not None else None
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = self.activation(h)
                if p is not None:
                    h = h * (torch.rand_like(h) >= p) / kept
        if self.skip is not None:
            h = h + self.skip(x)
        return h

    def append_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Add L members that are plain linear models (weight [L, in, out], bias [L, out]): their MLP layers are
        all zero, so their output is the skip path's alone. Members m ≥ the old count are the new ones."""
        if self.skip is None:
            raise ValueError("linear members live on the linear skip path; this ensemble has none")
        n = weight.shape[0]
        for layer in self.layers:
            assert isinstance(layer, BatchedLinear)
            w, b = layer.weight.data, layer.bias.data
            layer.weight = nn.Parameter(torch.cat([w, w.new_zeros(n, *w.shape[1:])]))
            layer.bias = nn.Parameter(torch.cat([b, b.new_zeros(n, *b.shape[1:])]))
        self.skip.weight = nn.Parameter(torch.cat([self.skip.weight.data, weight.to(self.skip.weight)]))
        self.skip.bias = nn.Parameter(torch.cat([self.skip.bias.data, bias.to(self.skip.bias)[:, None, :]]))
        self.dropout = torch.cat([self.dropout, self.dropout.new_zeros(n)])
        self.member_weights = torch.cat([self.member_weights, self.member_weights.new_zeros(n)])

    def keep(self, members: list[int], weights: list[float]) -> None:
        """Drop every member not in `members` (in place); the kept ones average with `weights`."""
        idx = torch.as_tensor(members, dtype=torch.long, device=self.dropout.device)
        for layer in [*self.layers, *([self.skip] if self.skip is not None else [])]:
            layer.weight = nn.Parameter(layer.weight.data[idx].clone())
            layer.bias = nn.Parameter(layer.bias.data[idx].clone())
        self.dropout = self.dropout[idx].clone()
        self.member_weights = torch.as_tensor(weights, dtype=torch.float32, device=idx.device)


def build_ensemble(n_inputs: int, n_outputs: int, members: int, hidden_layers: tuple[int, ...], activation: str,
                   linear_skip: bool) -> EnsembleNet:
    return EnsembleNet(n_inputs, n_outputs, members, hidden_layers, activation, linear_skip)


def build_for(model: Any, n_inputs: int, n_outputs: int) -> nn.Module:
    """The network a resolved model spec (anything with the ModelSpec fields) describes."""
    if model.type == "ensemble":
        return EnsembleNet(n_inputs, n_outputs, model.members, tuple(model.hidden_layers), model.activation,
                           bool(model.linear_skip))
    return build_network(NetSpec(type=model.type, hidden_layers=tuple(model.hidden_layers),
                                 activation=model.activation, dropout=float(model.dropout),
                                 batch_norm=bool(model.batch_norm)), n_inputs, n_outputs)
