"""The ONNX export, run by onnxruntime, answers what `pipeline.predict_inputs` answers for the same raw records:
every model type, every activation, batch norm, ensembles with a linear skip and uneven member weights, and the
ensemble's encodings (missing-value indicators, piecewise-linear bins, rare and unseen levels) inside the graph."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
import torch
from torch import nn

from service.training.artifact import ModelMeta
from service.training.features import Encoding, fit_preprocessing, fit_regression_targets, records_to_table, transform
from service.training.nets import EnsembleNet, build_for
from service.training.onnx_export import ExportError, export_onnx, input_tensors, output_tensors
from service.training.pipeline import predict_inputs

TOLERANCE = 1e-5
KINDS = {"age": "numeric", "dose": "numeric", "smoker": "boolean", "site": "categorical"}


def _table(n: int, seed: int) -> pa.Table:
    """Rows with missing values in every column, a rare level ('oslo', once) and a heavy-tailed number."""
    rng = np.random.default_rng(seed)
    age = rng.normal(50, 12, n)
    dose = rng.lognormal(3, 1, n)
    smoker = rng.integers(0, 2, n).astype(float)
    site = rng.choice(["bern", "lyon", "pisa"], n).astype(object)
    site[0] = "oslo"
    for col, every in ((age, 7), (dose, 5), (smoker, 9)):
        col[::every] = np.nan
    site[3::11] = None
    return pa.table({"age": pa.array(age, from_pandas=True), "dose": pa.array(dose, from_pandas=True),
                     "smoker": pa.array(smoker, from_pandas=True), "site": pa.array(list(site), pa.string())})


def _records() -> list[dict]:
    """Held-out records as /predict takes them: missing values, an unseen level, the rare level, extremes."""
    out = []
    rng = np.random.default_rng(7)
    for i in range(40):
        out.append({"age": None if i % 6 == 0 else float(rng.normal(50, 20)),
                    "dose": None if i % 8 == 1 else float(rng.lognormal(3, 1.5)),
                    "smoker": None if i % 9 == 2 else bool(i % 2),
                    "site": [None, "bern", "lyon", "pisa", "oslo", "madrid"][i % 6]})
    out.append({"age": 1e6, "dose": -1e6, "smoker": True, "site": "pisa"})
    return out


def _onnx_inputs(records: list[dict], meta: ModelMeta) -> dict[str, np.ndarray]:
    """The same records in the graph's input contract: float64 with NaN for missing, strings with '' for missing."""
    feeds = {}
    for f in meta.preprocessing["features"]:
        values = [r[f["name"]] for r in records]
        if f["kind"] == "categorical":
            feeds[f["name"]] = np.array(["" if v is None else v for v in values], dtype=object)
        else:
            feeds[f["name"]] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return feeds


def _meta(model: dict, task: str, target: dict, encoding: Encoding, n_outputs: int) -> ModelMeta:
    pre = fit_preprocessing(_table(300, 0), list(KINDS), KINDS, encoding)
    return ModelMeta(spec={"model": model}, task=task, target=target, preprocessing=pre, n_inputs=pre["n_inputs"],
                     n_outputs=n_outputs, model_id="mdl_test", ensemble={"members": model.get("members")})


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    """Weights far from their initialisation (a zero-initialised linear skip included), batch norm statistics
    that are not the identity, then eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return net.eval()


def _run(net: nn.Module, meta: ModelMeta, records: list[dict]) -> tuple[dict, dict]:
    """(what /predict's code answers, what onnxruntime answers) for the records."""
    expected = predict_inputs(net, meta, transform(records_to_table(records, meta.preprocessing["features"]),
                                                   meta.preprocessing))
    session = ort.InferenceSession(export_onnx(net, meta), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return expected, dict(zip(names, session.run(None, _onnx_inputs(records, meta)), strict=True))


def _assert_classifier_matches(expected: dict, got: dict, labels: list) -> None:
    probabilities = np.array([[p[str(label)] for label in labels] for p in expected["probabilities"]])
    assert got["probabilities"].shape == probabilities.shape
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=0, atol=TOLERANCE)
    assert got["predictions"].tolist() == expected["predictions"]


def _network(model: dict, meta: ModelMeta, seed: int) -> nn.Module:
    spec = meta.model
    if model["type"] == "ensemble":
        spec.members = model["members"]
    net = _randomise(build_for(spec, meta.n_inputs, meta.n_outputs), seed)
    if isinstance(net, EnsembleNet):
        net.keep(list(range(model["members"])), [0.5, 0.0, 0.3, 0.2][:model["members"]])
    return net


SINGLE = {"hidden_layers": [8, 5], "dropout": 0.2, "batch_norm": False, "members": None, "linear_skip": None}
ENSEMBLE_ENCODING = Encoding(missing_indicators=True, bins=4, min_category_rows=2)
CLASSIFIERS = [
    ({"type": "logistic_regression", **SINGLE}, Encoding()),
    *[({"type": "mlp", **SINGLE, "activation": a}, Encoding()) for a in ("relu", "leaky_relu", "tanh", "sigmoid",
                                                                          "gelu", "linear")],
    ({"type": "mlp", **SINGLE, "activation": "relu", "batch_norm": True}, Encoding()),
    ({"type": "ensemble", "hidden_layers": [8, 6], "activation": "relu", "members": 4, "linear_skip": True},
     ENSEMBLE_ENCODING),
    ({"type": "ensemble", "hidden_layers": [7], "activation": "gelu", "members": 3, "linear_skip": False},
     ENSEMBLE_ENCODING),
]


@pytest.mark.parametrize(("model", "encoding"), CLASSIFIERS,
                         ids=[f"{m['type']}-{m.get('activation', '')}-{i}" for i, (m, _) in enumerate(CLASSIFIERS)])
@pytest.mark.parametrize("labels", [["high", "low", "mid"], [0, 1]], ids=["3 classes", "2 classes"])
def test_a_classifier_gives_the_probabilities_and_labels_of_predict(model, encoding, labels):
    width = 1 if len(labels) == 2 else len(labels)
    meta = _meta(model, "classification", {"task": "classification", "labels": labels}, encoding, width)
    expected, got = _run(_network(model, meta, seed=len(labels)), meta, _records())
    _assert_classifier_matches(expected, got, labels)
    assert got["predictions"].dtype == (np.int64 if labels == [0, 1] else object)


@pytest.mark.parametrize("model", [{"type": "mlp", **SINGLE, "activation": "tanh"},
                                   {"type": "ensemble", "hidden_layers": [8], "activation": "relu", "members": 4,
                                    "linear_skip": True}], ids=["mlp", "ensemble"])
def test_a_regression_model_gives_the_values_of_predict_in_the_targets_units(model):
    targets = pa.table({"y": [1.0, 5.0, 900.0, 20.0], "z": [-3.0, 0.0, 1.0, 2.0]})
    target = fit_regression_targets(targets, ["y", "z"])
    meta = _meta(model, "regression", target, ENSEMBLE_ENCODING, 2)
    expected, got = _run(_network(model, meta, seed=3), meta, _records())
    values = np.array([[row["y"], row["z"]] for row in expected["predictions"]])
    assert got["predictions"].dtype == np.float64 and got["predictions"].shape == values.shape
    np.testing.assert_allclose(got["predictions"], values, rtol=TOLERANCE, atol=TOLERANCE)


def test_a_perceptron_answers_labels_only_as_predict_does():
    meta = _meta({"type": "perceptron", **SINGLE}, "classification",
                 {"task": "classification", "labels": ["no", "yes"]}, Encoding(), 1)
    net = _network({"type": "perceptron"}, meta, seed=5)
    expected, got = _run(net, meta, _records())
    assert expected["probabilities"] is None and set(got) == {"predictions"}
    assert got["predictions"].tolist() == expected["predictions"]
    assert len(set(expected["predictions"])) == 2  # the records reach both sides of the threshold


def test_an_autoencoder_gives_its_reconstruction_error():
    meta = _meta({"type": "autoencoder", **SINGLE, "hidden_layers": [6, 2], "activation": "relu"}, "autoencoder",
                 {"task": "autoencoder"}, Encoding(), 0)
    meta = meta.model_copy(update={"n_outputs": meta.n_inputs})
    expected, got = _run(_network({"type": "autoencoder"}, meta, seed=6), meta, _records())
    np.testing.assert_allclose(got["predictions"][:, 0], expected["predictions"], rtol=TOLERANCE, atol=TOLERANCE)


def test_an_array_model_takes_the_uploaded_shape():
    pre = {"kind": "array", "shape": [1, 4, 4], "scale": 1 / 255, "n_inputs": 16}
    meta = ModelMeta(spec={"model": {"type": "mlp", **SINGLE, "activation": "relu"}}, task="classification",
                     target={"task": "classification", "labels": [0, 1, 2]}, preprocessing=pre, n_inputs=16,
                     n_outputs=3)
    net = _network({"type": "mlp"}, meta, seed=8)
    images = np.random.default_rng(0).integers(0, 256, (12, 1, 4, 4)).astype(np.float32)
    expected = predict_inputs(net, meta, (images.reshape(12, -1).astype(np.float64) / 255).astype(np.float32))
    session = ort.InferenceSession(export_onnx(net, meta), providers=["CPUExecutionProvider"])
    predictions, probabilities = session.run(None, {"inputs": images})
    _assert_classifier_matches(expected, {"predictions": predictions, "probabilities": probabilities}, [0, 1, 2])


def test_the_graph_declares_the_documented_contract():
    meta = _meta({"type": "mlp", **SINGLE, "activation": "relu"}, "classification",
                 {"task": "classification", "labels": ["a", "b", "c"]}, ENSEMBLE_ENCODING, 3)
    model = onnx.load_from_string(export_onnx(_network({"type": "mlp"}, meta, seed=1), meta))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {"age": onnx.TensorProto.DOUBLE, "dose": onnx.TensorProto.DOUBLE,
                      "smoker": onnx.TensorProto.DOUBLE, "site": onnx.TensorProto.STRING}
    assert [o.name for o in model.graph.output] == ["predictions", "probabilities"]
    assert [t.name for t in input_tensors(meta)] == list(inputs)
    assert [(t.name, t.datatype, t.shape) for t in output_tensors(meta)] == [("predictions", "BYTES", (-1,)),
                                                                             ("probabilities", "FP32", (-1, 3))]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["labels"] == '["a", "b", "c"]' and props["model_id"] == "mdl_test"


def test_a_layer_without_an_exporter_is_refused_by_name():
    meta = _meta({"type": "mlp", **SINGLE, "activation": "relu"}, "classification",
                 {"task": "classification", "labels": ["a", "b", "c"]}, Encoding(), 3)
    net = nn.Sequential(nn.Linear(meta.n_inputs, 3), nn.Softplus())
    with pytest.raises(ExportError, match="a Softplus layer has no exporter"):
        export_onnx(net, meta)
