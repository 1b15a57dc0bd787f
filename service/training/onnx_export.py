"""A trained model as one self-contained ONNX graph: the raw feature columns in, the answers of `/predict` out.

The input contract (also what the Open Inference Protocol's metadata shows, see `input_tensors`):

- one input per feature column, named after it, shaped [N]: a numeric or boolean column as float64 (NaN or
  infinity is a missing value, imputed in the graph as in training), a categorical column as a string (the level
  as the data have it; "" is a missing value; a level not seen in training gets the all-zero one-hot, as in
  `/predict`);
- a model trained on arrays takes one input `inputs`, float32 shaped [N, *the uploaded X's shape].

Inside the graph, exactly as `features.transform` does it: imputation, standardisation, missing-value indicators,
piecewise-linear bins and one-hot categories (float64 arithmetic, then float32 for the network). Then the network
(an ensemble as one graph: its members' weights stacked [K, in, out], their probabilities averaged with the kept
weights) and the head: `probabilities` float32 [N, classes] in the model's label order and `predictions` (the
label, as a string, int64 or bool tensor) for a classifier; `predictions` float64 [N, targets] in the targets'
units for regression; for an autoencoder its reconstruction error, float64 [N, 1]; a perceptron answers
`predictions` only, as `/predict` does.

Pure onnx + torch + numpy: no database and no HTTP.
"""

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from service.training.artifact import ModelMeta
from service.training.nets import BatchedLinear, EnsembleNet

OPSET = 17
ML_OPSET = 3  # ai.onnx.ml, for LabelEncoder (categorical levels → indices)
IR_VERSION = 8  # the IR of opset 17: runtimes from 2022 on read it
BATCH = "N"
ARRAY_INPUT = "inputs"
PROBABILITIES, PREDICTIONS = "probabilities", "predictions"


class ExportError(ValueError):
    """The model holds something the exporter cannot write as ONNX (the message says what)."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of the graph: its name, its Open Inference Protocol datatype and shape (-1: any)."""

    name: str
    datatype: str  # FP32, FP64, INT64, BOOL or BYTES
    shape: tuple[int, ...]


_ONNX_TYPES = {"FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "INT64": TensorProto.INT64,
               "BOOL": TensorProto.BOOL, "BYTES": TensorProto.STRING}


def input_tensors(meta: ModelMeta) -> list[TensorInfo]:
    """The graph's inputs: one per feature column (or `inputs` for an array model)."""
    pre = meta.preprocessing
    if pre.get("kind") == "array":
        return [TensorInfo(ARRAY_INPUT, "FP32", (-1, *map(int, pre["shape"])))]
    return [TensorInfo(f["name"], "BYTES" if f["kind"] in ("categorical", "datetime") else "FP64", (-1,))
            for f in pre["features"]]


def label_datatype(labels: list[Any]) -> str:
    """How a classifier's labels travel as a tensor: BOOL, INT64, or BYTES (strings) for anything else."""
    if labels and all(isinstance(v, bool) for v in labels):
        return "BOOL"
    if labels and all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        return "INT64"
    return "BYTES"


def output_tensors(meta: ModelMeta) -> list[TensorInfo]:
    """The graph's outputs, in the order the graph lists them."""
    target = meta.target
    task = target["task"]
    if task == "classification":
        labels = target["labels"]
        predictions = TensorInfo(PREDICTIONS, label_datatype(labels), (-1,))
        if meta.model_type == "perceptron":
            return [predictions]
        return [predictions, TensorInfo(PROBABILITIES, "FP32", (-1, len(labels)))]
    if task == "regression":
        return [TensorInfo(PREDICTIONS, "FP64", (-1, len(target["names"])))]
    return [TensorInfo(PREDICTIONS, "FP64", (-1, 1))]  # an autoencoder's reconstruction error


class _Graph:
    """Nodes and constants of the graph being built; every intermediate gets a fresh name."""

    def __init__(self, reserved: set[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.reserved = reserved
        self.count = 0

    def name(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"{hint}:{self.count}"
            if name not in self.reserved:
                return name

    def const(self, value: Any, dtype: Any, hint: str = "const") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs: Any) -> str:
        output = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], domain=domain, **attrs))
        return output

    def unsqueeze(self, x: str, axis: int) -> str:
        return self.op("Unsqueeze", x, self.const([axis], np.int64, "axes"))

    def to_float(self, x: str) -> str:
        return self.op("Cast", x, to=TensorProto.FLOAT)


# ---------------------------------------------------------------- preprocessing


def _numeric_inputs(g: _Graph, x: str, f: dict[str, Any]) -> list[str]:
    """What `features.transform` makes of a numeric (or boolean) column: its standardised value, then its missing
    indicator and its bins where it has them; float64 arithmetic, float32 results."""
    missing = g.op("Or", g.op("IsNaN", x), g.op("IsInf", x))
    filled = g.op("Where", missing, g.const(f["fill"], np.float64, "fill"), x)
    z = g.op("Div", g.op("Sub", filled, g.const(f["mean"], np.float64, "mean")),
             g.const(f["scale"], np.float64, "scale"))
    parts = [g.to_float(g.unsqueeze(z, 1))]
    if f.get("missing_indicator"):
        parts.append(g.to_float(g.unsqueeze(missing, 1)))
    if "bins" in f:
        edges = np.asarray(f["bins"], dtype=np.float64)
        fraction = g.op("Div", g.op("Sub", g.unsqueeze(filled, 1), g.const(edges[:-1], np.float64, "bin_low")),
                        g.const(np.diff(edges), np.float64, "bin_width"))
        parts.append(g.to_float(g.op("Clip", fraction, g.const(0.0, np.float64), g.const(1.0, np.float64))))
    return parts


def _categorical_inputs(g: _Graph, x: str, f: dict[str, Any]) -> list[str]:
    """One-hot of the kept levels; "" (missing) is the training rows' most frequent level; any other level not kept
    is all zeros."""
    categories: list[str] = f["categories"]
    if not categories:
        return []
    keys, values = list(categories), list(range(len(categories)))
    if "" not in categories:
        keys.append("")
        values.append(categories.index(f["fill"]) if f["fill"] in categories else -1)
    index = g.op("LabelEncoder", x, domain="ai.onnx.ml", keys_strings=keys, values_int64s=values, default_int64=-1)
    hot = g.op("Equal", g.unsqueeze(index, 1), g.const(np.arange(len(categories)), np.int64, "levels"))
    return [g.to_float(hot)]


def _preprocess(g: _Graph, meta: ModelMeta) -> str:
    """The network's float32 input matrix [N, n_inputs] from the graph's inputs."""
    pre = meta.preprocessing
    if pre.get("kind") == "array":
        flat = g.op("Flatten", g.op("Cast", ARRAY_INPUT, to=TensorProto.DOUBLE), axis=1)
        return g.to_float(g.op("Mul", flat, g.const(pre["scale"], np.float64, "scale")))
    parts: list[str] = []
    dated = [f["name"] for f in pre["features"] if f["kind"] == "datetime"]
    if dated:
        raise ExportError(f"date feature(s) {', '.join(repr(n) for n in dated)}: reading dates written as text "
                          "has no ONNX operator; train without them (or set their kind to categorical) to export, "
                          "or serve the model through /predict or /v2")
    for f in pre["features"]:
        parts += _categorical_inputs(g, f["name"], f) if f["kind"] == "categorical" else \
            _numeric_inputs(g, f["name"], f)
    return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)


# ---------------------------------------------------------------- networks


def _array(t: Any) -> NDArray[np.float32]:
    return np.asarray(t.detach().to("cpu").numpy(), dtype=np.float32)


def _activation(g: _Graph, x: str, module: nn.Module) -> str:
    if isinstance(module, nn.ReLU):
        return g.op("Relu", x)
    if isinstance(module, nn.LeakyReLU):
        return g.op("LeakyRelu", x, alpha=float(module.negative_slope))
    if isinstance(module, nn.Tanh):
        return g.op("Tanh", x)
    if isinstance(module, nn.Sigmoid):
        return g.op("Sigmoid", x)
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise ExportError(f"GELU with approximate={module.approximate!r} has no exporter here")
        # GELU(x) = x · Φ(x) = 0.5 · x · (1 + erf(x / √2)), as torch computes it (opset 17 has no Gelu)
        erf = g.op("Erf", g.op("Mul", x, g.const(1 / math.sqrt(2), np.float32)))
        return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.const(1.0, np.float32))), g.const(0.5, np.float32))
    if isinstance(module, (nn.Identity, nn.Dropout)):  # dropout is the identity in eval mode
        return x
    raise ExportError(f"a {type(module).__name__} layer has no exporter here")


def _modules(net: nn.Module) -> list[nn.Module]:
    """The leaf modules of nested Sequentials, in order."""
    if isinstance(net, nn.Sequential):
        return [leaf for m in net for leaf in _modules(m)]
    return [net]


def _sequential(g: _Graph, x: str, net: nn.Module) -> str:
    """A single network (Linear / BatchNorm1d / activation / Dropout layers) in eval mode."""
    h = x
    for m in _modules(net):
        if isinstance(m, nn.Linear):
            bias = _array(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
            h = g.op("Gemm", h, g.const(_array(m.weight), np.float32, "weight"), g.const(bias, np.float32, "bias"),
                     transB=1)
        elif isinstance(m, nn.BatchNorm1d):
            if m.running_mean is None or m.running_var is None:
                raise ExportError("batch norm without running statistics cannot be exported")
            n = m.num_features
            weight = _array(m.weight) if m.weight is not None else np.ones(n, np.float32)
            bias = _array(m.bias) if m.bias is not None else np.zeros(n, np.float32)
            h = g.op("BatchNormalization", h, g.const(weight, np.float32, "bn_scale"),
                     g.const(bias, np.float32, "bn_bias"), g.const(_array(m.running_mean), np.float32, "bn_mean"),
                     g.const(_array(m.running_var), np.float32, "bn_var"), epsilon=float(m.eps))
        else:
            h = _activation(g, h, m)
    return h


def _batched(g: _Graph, x: str, layer: BatchedLinear) -> str:
    """x [N, in] (every member's same rows) or [K, N, in] → [K, N, out]: one broadcast MatMul for all members."""
    return g.op("Add", g.op("MatMul", x, g.const(_array(layer.weight), np.float32, "weight")),
                g.const(_array(layer.bias), np.float32, "bias"))


def _two_class(g: _Graph, p1: str, axis: int) -> str:
    """[1 − p, p] stacked along a new last axis (`axis`)."""
    p1 = g.unsqueeze(p1, axis)
    return g.op("Concat", g.op("Sub", g.const(1.0, np.float32), p1), p1, axis=axis)


def _ensemble(g: _Graph, x: str, net: EnsembleNet, task: str, n_classes: int) -> str:
    """The ensemble's logits (or values) [N, o], as `ensemble.ensemble_outputs` computes them: members' outputs
    [K, N, o], their probabilities (or values) averaged with the normalised kept weights, then back to logits."""
    h = x
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        assert isinstance(layer, BatchedLinear)  # EnsembleNet's layers are BatchedLinear
        h = _batched(g, h, layer)
        if i < last:
            h = _activation(g, h, net.activation)
    if net.skip is not None:
        h = g.op("Add", h, _batched(g, x, net.skip))
    weights = net.member_weights.detach().to("cpu").float()
    weights = weights / weights.sum().clamp_min(1e-12)
    w = g.const(weights.numpy().reshape(-1, 1, 1), np.float32, "member_weights")
    if task == "classification":
        if n_classes == 2:
            probs = _two_class(g, g.op("Sigmoid", g.op("Gather", h, g.const(0, np.int64), axis=2)), 2)
        else:
            probs = g.op("Softmax", h, axis=2)
        mean = g.op("ReduceSum", g.op("Mul", probs, w), g.const([0], np.int64, "axes"), keepdims=0)
        logp = g.op("Log", g.op("Max", mean, g.const(1e-12, np.float32)))
        if n_classes != 2:
            return logp
        column = [g.op("Gather", logp, g.const([c], np.int64), axis=1) for c in (1, 0)]
        return g.op("Sub", *column)
    return g.op("ReduceSum", g.op("Mul", h, w), g.const([0], np.int64, "axes"), keepdims=0)


def _labels(g: _Graph, labels: list[Any]) -> str:
    kind = label_datatype(labels)
    if kind == "BOOL":
        return g.const(np.asarray(labels, dtype=bool), bool, "labels")
    if kind == "INT64":
        return g.const(np.asarray(labels, dtype=np.int64), np.int64, "labels")
    return g.const(np.asarray([str(v) for v in labels], dtype=object), object, "labels")


def _head(g: _Graph, out: str, X: str, meta: ModelMeta) -> None:
    """The named outputs from the network's logits (or values), as `pipeline.predict_arrays` answers."""
    target = meta.target
    task = target["task"]
    if task == "classification":
        labels = target["labels"]
        if meta.model_type == "perceptron":
            fired = g.op("Cast", g.op("Greater", g.op("Gather", out, g.const(0, np.int64), axis=1),
                                      g.const(0.0, np.float32)), to=TensorProto.INT64)
            g.op("Gather", _labels(g, labels), fired, axis=0, out=PREDICTIONS)
            return
        if len(labels) == 2:
            probs = _two_class(g, g.op("Sigmoid", g.op("Gather", out, g.const(0, np.int64), axis=1)), 1)
            g.op("Identity", probs, out=PROBABILITIES)
        else:
            g.op("Softmax", out, axis=1, out=PROBABILITIES)
        chosen = g.op("ArgMax", PROBABILITIES, axis=1, keepdims=0)
        g.op("Gather", _labels(g, labels), chosen, axis=0, out=PREDICTIONS)
    elif task == "regression":
        values = g.op("Cast", out, to=TensorProto.DOUBLE)
        g.op("Add", g.op("Mul", values, g.const(target["scale"], np.float64, "target_scale")),
             g.const(target["mean"], np.float64, "target_mean"), out=PREDICTIONS)
    else:  # autoencoder: the reconstruction error per record
        error = g.op("Mul", *[g.op("Sub", out, X)] * 2)
        g.op("Cast", g.op("ReduceMean", error, axes=[1], keepdims=1), to=TensorProto.DOUBLE, out=PREDICTIONS)


def export_onnx(net: nn.Module, meta: ModelMeta) -> bytes:
    """The model (network in eval mode + its meta) as the bytes of one self-contained .onnx file."""
    inputs, outputs = input_tensors(meta), output_tensors(meta)
    clash = sorted({t.name for t in inputs} & {t.name for t in outputs})
    if clash:
        raise ExportError(f"feature column(s) {', '.join(repr(n) for n in clash)} share a name with the graph's "
                          "outputs (predictions, probabilities); rename the column(s) and train again to export")
    g = _Graph(reserved={t.name for t in [*inputs, *outputs]})
    X = _preprocess(g, meta)
    task = meta.target["task"]
    n_classes = len(meta.target.get("labels", []))
    out = _ensemble(g, X, net, task, n_classes) if isinstance(net, EnsembleNet) else _sequential(g, X, net)
    _head(g, out, X, meta)
    graph = helper.make_graph(
        g.nodes, f"mlp_service.{meta.model_type}",
        [helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.datatype], [BATCH, *t.shape[1:]]) for t in inputs],
        [helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.datatype], [BATCH, *t.shape[1:]]) for t in outputs],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                              producer_name="mlp_service", producer_version=meta.versions.get("mlp_service", ""),
                              doc_string=f"{meta.model_type} {task} model {meta.model_id or ''}".strip())
    model.ir_version = IR_VERSION
    labels = meta.target.get("labels") or meta.target.get("names")
    onnx.helper.set_model_props(model, {"model_id": meta.model_id or "", "task": task,
                                        "model_type": meta.model_type,
                                        **({"labels": json.dumps(labels)} if labels is not None else {})})
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())
