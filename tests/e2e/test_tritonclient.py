"""A client we did not write speaks to the service: Triton's `tritonclient.http` against a real `mlps serve`, on
models the service trained: health, readiness, metadata, and infer (binary tensors, as it sends by default, and
JSON) answering the same probabilities as /predict; its exceptions carry our 400s and 401s. And the Python
client's ONNX export, run by onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.client import ApiError, Client
from tests.helpers import upload, wait_for_job
from tests.live import IRIS_RECORDS, SHORT_TRAINING, admin_headers, admin_key

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _train(server, dataset_id: str, **spec) -> str:
    job = server.post("/jobs", json={"dataset_id": dataset_id, "training": SHORT_TRAINING, **spec})
    assert job.status_code == 202, job.text
    return wait_for_job(server, job.json()["id"])["model_id"]


@pytest.fixture(scope="module")
def iris_model(server) -> str:
    return _train(server, upload(server, "iris.csv").json()["id"], target="species")


@pytest.fixture(scope="module")
def mixed_model(server) -> str:
    """A model with a categorical column (BYTES), trained as the default ensemble."""
    rng = np.random.default_rng(3)
    lines = ["dose,site,response"]
    for i in range(120):
        dose, site = rng.normal(10, 3), ["bern", "lyon", "pisa"][i % 3]
        lines.append(f"{'' if i % 10 == 0 else round(dose, 2)},{site},"
                     f"{'yes' if dose + (4 if site == 'pisa' else 0) > 11 else 'no'}")
    dataset = upload(server, "mixed.csv", ("\n".join(lines) + "\n").encode()).json()["id"]
    return _train(server, dataset, target="response")


@pytest.fixture(scope="module")
def triton_client(server):
    client = triton.InferenceServerClient(url=server.base_url.netloc.decode())
    yield client
    client.close()


@pytest.fixture
def headers(server) -> dict[str, str]:
    # per test: tritonclient adds its own headers to the dict it is given
    return admin_headers(server.data_dir)


def _iris_inputs(binary: bool, datatype: str = "FP64") -> list[triton.InferInput]:
    inputs = []
    for name in IRIS:
        column = np.array([r[name] for r in IRIS_RECORDS], dtype={"FP64": np.float64, "FP32": np.float32}[datatype])
        tensor = triton.InferInput(name, list(column.shape), datatype)
        tensor.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_readiness_and_metadata(triton_client, iris_model, headers):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["name"] == "mlp-service"
    assert triton_client.is_model_ready(iris_model, headers=headers)
    meta = triton_client.get_model_metadata(iris_model, headers=headers)
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [(name, "FP64") for name in IRIS]
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "probabilities"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary tensors", "json tensors"])
def test_infer_answers_the_probabilities_of_predict(server, triton_client, iris_model, headers, binary):
    expected = server.post("/predict", json={"model_id": iris_model, "records": IRIS_RECORDS}).json()
    labels = server.get(f"/models/{iris_model}").json()["labels"]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "predictions")]
    result = triton_client.infer(iris_model, _iris_inputs(binary), outputs=outputs, headers=headers,
                                 request_id="iris-1")
    assert result.get_response()["id"] == "iris-1"
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float64 and probabilities.shape == (len(IRIS_RECORDS), len(labels))
    assert probabilities.tolist() == [[p[label] for label in labels] for p in expected["probabilities"]]
    predictions = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predictions").tolist()]
    assert predictions == expected["predictions"]


def test_float32_inputs_are_accepted_and_rounded_as_float32(server, triton_client, iris_model, headers):
    records = [{k: float(np.float32(v)) for k, v in r.items()} for r in IRIS_RECORDS]
    expected = server.post("/predict", json={"model_id": iris_model, "records": records}).json()
    labels = server.get(f"/models/{iris_model}").json()["labels"]
    result = triton_client.infer(iris_model, _iris_inputs(True, "FP32"), headers=headers)
    assert result.as_numpy("probabilities").tolist() == [[p[label] for label in labels]
                                                         for p in expected["probabilities"]]


def test_bytes_inputs_reach_an_ensemble_with_a_categorical_column(server, triton_client, mixed_model, headers):
    records = [{"dose": 12.5, "site": "pisa"}, {"dose": None, "site": "lyon"}, {"dose": 6.0, "site": "madrid"}]
    expected = server.post("/predict", json={"model_id": mixed_model, "records": records}).json()
    dose = triton.InferInput("dose", [3], "FP64")
    dose.set_data_from_numpy(np.array([12.5, np.nan, 6.0]))  # NaN: a missing value, imputed as in training
    site = triton.InferInput("site", [3, 1], "BYTES")
    site.set_data_from_numpy(np.array([[b"pisa"], [b"lyon"], [b"madrid"]], dtype=object))
    result = triton_client.infer(mixed_model, [dose, site], headers=headers)  # every output, binary
    labels = server.get(f"/models/{mixed_model}").json()["labels"]
    assert result.as_numpy("probabilities").tolist() == [[p[label] for label in labels]
                                                         for p in expected["probabilities"]]


def test_its_exceptions_carry_the_protocols_errors(triton_client, iris_model, headers):
    wrong = triton.InferInput("petal_lenght", [2], "FP64")
    wrong.set_data_from_numpy(np.array([1.0, 2.0]))
    with pytest.raises(InferenceServerException) as bad:
        triton_client.infer(iris_model, [*_iris_inputs(True)[:2], wrong, _iris_inputs(True)[3]], headers=headers)
    assert bad.value.status() == "400"
    assert "unknown input 'petal_lenght'" in bad.value.message()
    with pytest.raises(InferenceServerException) as anonymous:
        triton_client.infer(iris_model, _iris_inputs(True))
    assert anonymous.value.status() == "401"


def test_the_python_client_exports_a_file_onnxruntime_runs(server, iris_model, tmp_path):
    with Client(str(server.base_url), api_key=admin_key(server.data_dir)) as mlps:
        mlps.export_model(iris_model, tmp_path / "iris.onnx")
        expected = mlps.predict(iris_model, IRIS_RECORDS)
        with pytest.raises(ApiError) as unknown:
            mlps.export_model("mdl_0000000000000000", tmp_path / "none.onnx")
    assert unknown.value.status == 404 and "mdl_0000000000000000" in unknown.value.detail
    session = ort.InferenceSession(str(tmp_path / "iris.onnx"))
    predictions, probabilities = session.run(None, {name: np.array([r[name] for r in IRIS_RECORDS])
                                                    for name in IRIS})
    assert predictions.tolist() == expected["predictions"]
    labels = list(expected["probabilities"][0])
    np.testing.assert_allclose(probabilities, [[p[label] for label in labels] for p in expected["probabilities"]],
                               rtol=0, atol=1e-5)
