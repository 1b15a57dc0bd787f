"""ONNX export and the Open Inference Protocol on models the service trained: onnxruntime runs the exported file on
held-out rows (missing values, an unseen level) and answers /predict's probabilities or values within 1e-5; /v2
infer answers them exactly, in JSON or binary tensors; every bad request is a 400 in the protocol's error shape
naming the input."""

import io
import json
import math

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import bearer, make_key, problem, upload

TOLERANCE = 1e-5
SITES = ["bern", "lyon", "pisa", "oslo"]
FEATURES = ["age", "dose", "smoker", "site"]
HEADER = "Inference-Header-Content-Length"


def _patient(rng: np.random.Generator, i: int) -> dict:
    age, dose = float(rng.normal(50, 12)), float(rng.lognormal(3, 0.8))
    smoker, site = bool(rng.integers(0, 2)), SITES[int(rng.integers(0, 4))]
    risk = 0.04 * (age - 50) + 0.02 * (dose - 20) + 0.8 * smoker + (0.7 if site == "pisa" else 0) + rng.normal(0, .3)
    return {"age": None if i % 7 == 3 else round(age, 2), "dose": None if i % 9 == 4 else round(dose, 3),
            "smoker": None if i % 11 == 5 else smoker, "site": None if i % 13 == 6 else site,
            "outcome": "high" if risk > 0.6 else "low" if risk < -0.4 else "mid", "score": round(10 * risk + 3, 4)}


def _csv(rows: list[dict]) -> bytes:
    def cell(v):
        return "" if v is None else ("true" if v is True else "false" if v is False else str(v))

    header = ",".join(rows[0])
    return "\n".join([header, *(",".join(cell(v) for v in r.values()) for r in rows)]).encode() + b"\n"


def _held_out() -> list[dict]:
    """Rows the model never saw: missing values in every column, a level unseen in training ('madrid')."""
    rng = np.random.default_rng(99)
    rows = [{k: v for k, v in _patient(rng, i + 1).items() if k in FEATURES} for i in range(40)]
    rows[0]["site"] = "madrid"
    return rows


@pytest.fixture
def dataset_id(client) -> str:
    rng = np.random.default_rng(0)
    return upload(client, "patients.csv", _csv([_patient(rng, i) for i in range(240)])).json()["id"]


@pytest.fixture
def run_job(client, worker):
    """Submit a job spec, let the worker run it; answers its model id."""
    def run(spec: dict) -> str:
        job = client.post("/jobs", json=spec)
        assert job.status_code == 202, job.text
        assert worker.run_once() == job.json()["id"]
        job = client.get(f"/jobs/{job.json()['id']}").json()
        assert job["status"] == "succeeded", job["error"]
        return job["model_id"]

    return run


@pytest.fixture
def train(run_job, dataset_id):
    """Train a model on the patients data set (target and model spec as given); answers its id."""
    def run(target: str = "outcome", model: dict | None = None, epochs: int = 15) -> str:
        spec = {"dataset_id": dataset_id, "target": target, "features": FEATURES,
                "training": {"epochs": epochs, "learning_rate": 0.01, "batch_size": 32}}
        return run_job(spec if model is None else {**spec, "model": model})

    return run


def _onnx_feeds(records: list[dict]) -> dict[str, np.ndarray]:
    """The documented input contract: float64 columns (NaN: missing), string columns ('': missing)."""
    feeds = {}
    for name in FEATURES:
        values = [r[name] for r in records]
        if name == "site":
            feeds[name] = np.array(["" if v is None else v for v in values], dtype=object)
        else:
            feeds[name] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return feeds


def _run_onnx(client, model_id: str, records: list[dict]) -> dict[str, np.ndarray]:
    resp = client.get(f"/models/{model_id}/export", params={"format": "onnx"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["content-disposition"] == f'attachment; filename="{model_id}.onnx"'
    session = ort.InferenceSession(resp.content, providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == sorted(FEATURES)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, _onnx_feeds(records)), strict=True))


def _binary_request(records: list[dict], outputs: list[str] | None = None,
                    binary_outputs: bool = True) -> tuple[bytes, dict[str, str]]:
    """An infer request with every input in the binary tensor extension (as tritonclient sends by default)."""
    feeds = _onnx_feeds(records)
    inputs, blobs = [], []
    for name, values in feeds.items():
        if values.dtype == object:
            blob = b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in values)
            datatype = "BYTES"
        else:
            blob, datatype = values.astype("<f8").tobytes(), "FP64"
        inputs.append({"name": name, "shape": [len(values)], "datatype": datatype,
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    doc: dict = {"id": "req-1", "inputs": inputs}
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), {HEADER: str(len(head))}


def _outputs(resp: httpx.Response) -> dict[str, np.ndarray]:
    """The answer's outputs as arrays, from JSON data or the binary part."""
    assert resp.status_code == 200, resp.text
    length = resp.headers.get(HEADER)
    head = json.loads(resp.content[:int(length)] if length else resp.content)
    rest, out = resp.content[int(length):] if length else b"", {}
    for o in head["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            data = np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None)
        else:
            raw, rest = rest[:size], rest[size:]
            if o["datatype"] == "BYTES":
                items, at = [], 0
                while at < len(raw):
                    n = int.from_bytes(raw[at:at + 4], "little")
                    items.append(raw[at + 4:at + 4 + n].decode())
                    at += 4 + n
                data = np.array(items, dtype=object)
            else:
                data = np.frombuffer(raw, dtype={"FP64": "<f8", "INT64": "<i8"}[o["datatype"]])
        out[o["name"]] = data.reshape(o["shape"])
    return out


def _protocol_error(resp: httpx.Response, status: int, fragment: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and fragment in body["error"], body
    return body["error"]


@pytest.mark.parametrize("model", [{"type": "mlp", "hidden_layers": [16, 8], "activation": "gelu"},
                                   {"type": "logistic_regression"}, None],
                         ids=["mlp", "logistic_regression", "ensemble default"])
def test_onnx_and_v2_answer_predicts_probabilities(client, train, model):
    model_id = train(model=model)
    assert client.get(f"/models/{model_id}").json()["model_type"] == (model or {"type": "ensemble"})["type"]
    records = _held_out()
    expected = client.post("/predict", json={"model_id": model_id, "records": records}).json()
    labels = client.get(f"/models/{model_id}").json()["labels"]
    probabilities = np.array([[p[label] for label in labels] for p in expected["probabilities"]])

    got = _run_onnx(client, model_id, records)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=0, atol=TOLERANCE)
    assert got["predictions"].tolist() == expected["predictions"]

    body, headers = _binary_request(records, ["probabilities", "predictions"])
    answer = _outputs(client.post(f"/v2/models/{model_id}/infer", content=body, headers=headers))
    assert answer["probabilities"].tolist() == probabilities.tolist()  # the same computation: equal, not close
    assert answer["predictions"].tolist() == expected["predictions"]


def test_a_regression_model_exports_its_values_in_the_targets_units(client, train):
    model_id = train(target="score", model={"type": "mlp", "hidden_layers": [16]})
    records = _held_out()
    expected = np.array(client.post("/predict", json={"model_id": model_id, "records": records}).json()["predictions"])
    assert expected.std() > 1  # in the target's units, not standardised

    got = _run_onnx(client, model_id, records)
    assert got["predictions"].shape == (len(records), 1)
    np.testing.assert_allclose(got["predictions"][:, 0], expected, rtol=TOLERANCE, atol=TOLERANCE)

    body, headers = _binary_request(records)  # no outputs named: every output, in JSON
    answer = _outputs(client.post(f"/v2/models/{model_id}/infer", content=body, headers=headers))
    assert answer["predictions"][:, 0].tolist() == expected.tolist()


def test_the_perceptron_and_the_autoencoder_export(client, run_job):
    rng = np.random.default_rng(1)
    rows = [{"x1": round(float(a), 3), "x2": round(float(b), 3), "y": "yes" if a + b > 0 else "no"}
            for a, b in rng.normal(size=(60, 2))]
    ds = upload(client, "separable.csv", _csv(rows)).json()["id"]
    records = [{"x1": 0.5, "x2": -1.5}, {"x1": 2.0, "x2": 0.1}]
    feeds = {"x1": np.array([0.5, 2.0]), "x2": np.array([-1.5, 0.1])}
    for spec in ({"target": "y", "model": {"type": "perceptron"}},
                 {"features": ["x1", "x2"],
                  "model": {"type": "autoencoder", "hidden_layers": [1]}}):
        model_id = run_job({"dataset_id": ds, "training": {"epochs": 5}, **spec})
        expected = client.post("/predict", json={"model_id": model_id, "records": records}).json()
        session = ort.InferenceSession(client.get(f"/models/{model_id}/export").content)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        if spec["model"]["type"] == "perceptron":
            assert expected["probabilities"] is None and set(got) == {"predictions"}
            assert got["predictions"].tolist() == expected["predictions"] == ["no", "yes"]
        else:
            np.testing.assert_allclose(got["predictions"][:, 0], expected["predictions"], rtol=TOLERANCE)


@pytest.fixture
def small_model(train) -> str:
    return train(model={"type": "logistic_regression"}, epochs=3)


def _json_request(**columns) -> dict:
    """A JSON infer request with these inputs: name → (datatype, shape, data)."""
    return {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, (d, s, v) in columns.items()]}


GOOD = {"age": ("FP64", [2], [40.0, 61.5]), "dose": ("FP32", [2, 1], [[12.0], [30.0]]),
        "smoker": ("BOOL", [2], [True, False]), "site": ("BYTES", [2], ["pisa", ""])}


def test_the_protocol_metadata_names_the_feature_columns(client, small_model):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "mlp-service" and "binary_tensor_data" in server["extensions"]
    meta = client.get(f"/v2/models/{small_model}").json()
    assert meta == {"name": small_model, "versions": ["1"], "platform": "mlp_service",
                    "inputs": [{"name": "age", "datatype": "FP64", "shape": [-1]},
                               {"name": "dose", "datatype": "FP64", "shape": [-1]},
                               {"name": "smoker", "datatype": "FP64", "shape": [-1]},
                               {"name": "site", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "predictions", "datatype": "BYTES", "shape": [-1]},
                                {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}]}
    assert client.get(f"/v2/models/{small_model}/versions/1").json() == meta
    assert client.get(f"/v2/models/{small_model}/ready").json() == {"name": small_model, "ready": True}


def test_a_json_request_of_mixed_datatypes_answers_as_predict(client, small_model):
    resp = client.post(f"/v2/models/{small_model}/infer", json={"id": "r7", **_json_request(**GOOD)})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["id"] == "r7" and body["model_name"] == small_model and body["model_version"] == "1"
    expected = client.post("/predict", json={"model_id": small_model, "records": [
        {"age": 40.0, "dose": 12.0, "smoker": True, "site": "pisa"},
        {"age": 61.5, "dose": 30.0, "smoker": False, "site": None}]}).json()
    out = {o["name"]: o for o in body["outputs"]}
    labels = client.get(f"/models/{small_model}").json()["labels"]
    assert out["predictions"] == {"name": "predictions", "datatype": "BYTES", "shape": [2],
                                  "data": expected["predictions"]}
    assert out["probabilities"]["shape"] == [2, 3]
    assert out["probabilities"]["data"] == [p[label] for p in expected["probabilities"] for label in labels]


def test_a_registry_reference_names_a_model_on_the_protocol_paths(client, small_model):
    assert client.post("/registry/patients", json={"model_id": small_model}).status_code == 201
    assert client.put("/registry/patients/aliases/production", json={"version": 1}).status_code == 200
    for path in ("/v2/models/patients@production", "/v2/models/patients:1", "/v2/models/patients/versions/1"):
        assert client.get(path).json()["inputs"][0]["name"] == "age", path
        assert client.post(f"{path}/infer", json=_json_request(**GOOD)).status_code == 200, path
    _protocol_error(client.get("/v2/models/patients@staging"), 404, "staging")
    _protocol_error(client.get("/v2/models/patients/versions/2"), 404, "version")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"agee": ("FP64", [2], [1.0, 2.0])}, "unknown input 'agee'; this model's inputs: age, dose, smoker, site"),
    ({"age": None}, "input 'age' is missing"),
    ({"age": ("FP64", [2, 2], [1.0, 2.0, 3.0, 4.0])}, "input 'age': shape [2, 2]"),
    ({"age": ("FP64", [3], [1.0, 2.0, 3.0])}, "the inputs disagree on the number of rows: 'age' has 3"),
    ({"age": ("FP64", [2], [1.0, 2.0, 3.0])}, "input 'age': shape [2] holds 2 element(s); its data have 3"),
    ({"age": ("BYTES", [2], ["40", "61"])}, "input 'age' is a numeric column"),
    ({"age": ("FP64", [2], ["40", "61"])}, "input 'age': FP64 data must be JSON numbers"),
    ({"age": ("FP128", [2], [1.0, 2.0])}, "input 'age': datatype 'FP128' is not one of"),
    ({"age": ("FP64", [0], [])}, "input 'age': 0 rows"),
    ({"site": ("FP64", [2], [1.0, 2.0])}, "input 'site' is a categorical column: send BYTES"),
    ({"smoker": ("INT64", [2], [1, 2])}, "input 'smoker' is a boolean column"),
    ({"smoker": ("BOOL", [2], [1, 0])}, "input 'smoker': BOOL data must be true or false"),
    ({"smoker": ("INT8", [2], [1.5, 0])}, "input 'smoker': INT8 data must be whole JSON numbers"),
    ({"smoker": ("UINT8", [2], [-1, 0])}, "input 'smoker': a value is out of range for UINT8"),
])
def test_a_bad_tensor_is_a_400_naming_the_input(client, small_model, change, fragment):
    columns = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    _protocol_error(client.post(f"/v2/models/{small_model}/infer", json=_json_request(**columns)), 400, fragment)


def test_a_malformed_request_is_a_400_saying_what_to_send(client, small_model):
    url = f"/v2/models/{small_model}/infer"
    _protocol_error(client.post(url, content=b"{not json"), 400, "the request is not JSON")
    _protocol_error(client.post(url, content=b"[" * 50_000), 400, "nested too deeply")
    _protocol_error(client.post(url, json={"inputs": []}), 400, "inputs")
    _protocol_error(client.post(url, json={"inputs": [{"name": "age", "datatype": "FP64", "data": [1.0]}]}), 400,
                    "input 'age': shape: Field required")
    no_data = _json_request(**GOOD)
    del no_data["inputs"][0]["data"]
    _protocol_error(client.post(url, json=no_data), 400, "input 'age' has no data")
    asked = {**_json_request(**GOOD), "outputs": [{"name": "probability"}]}
    _protocol_error(client.post(url, json=asked), 400,
                    "unknown output 'probability'; this model's outputs: predictions, probabilities")


def test_bad_binary_tensors_are_a_400_naming_the_input(client, small_model):
    url = f"/v2/models/{small_model}/infer"
    records = [{"age": 40.0, "dose": 12.0, "smoker": True, "site": "pisa"}]
    body, headers = _binary_request(records)
    _protocol_error(client.post(url, content=body[:-3], headers=headers), 400, "input 'site'")
    _protocol_error(client.post(url, content=body + b"xx", headers=headers), 400, "2 byte(s) that no input")
    _protocol_error(client.post(url, content=body, headers={HEADER: "999999"}), 400, HEADER)
    head = json.loads(body[:int(headers[HEADER])])
    head["inputs"][0]["parameters"]["binary_data_size"] = 4  # not a whole FP64
    changed = json.dumps(head).encode()
    _protocol_error(client.post(url, content=changed + body[int(headers[HEADER]):],
                                headers={HEADER: str(len(changed))}), 400, "input 'age': shape [1] of FP64 takes 8")


def test_binary_outputs_carry_the_same_numbers_as_json(client, small_model):
    records = _held_out()[:5]
    url = f"/v2/models/{small_model}/infer"
    body, headers = _binary_request(records, ["probabilities", "predictions"], binary_outputs=True)
    binary = client.post(url, content=body, headers=headers)
    assert binary.headers["content-type"] == "application/octet-stream" and HEADER in binary.headers
    body, headers = _binary_request(records, ["probabilities", "predictions"], binary_outputs=False)
    plain = client.post(url, content=body, headers=headers)
    assert HEADER not in plain.headers
    a, b = _outputs(binary), _outputs(plain)
    assert a["probabilities"].tolist() == b["probabilities"].tolist()
    assert a["predictions"].tolist() == b["predictions"].tolist()


def test_keys_and_owners_hold_on_the_protocol_paths(client, small_model, migrated):
    url = f"/v2/models/{small_model}"
    anonymous = {"Authorization": ""}
    _protocol_error(client.get(url, headers=anonymous), 401, "")
    _protocol_error(client.post(f"{url}/infer", json=_json_request(**GOOD), headers=anonymous), 401, "")
    assert client.get("/v2/health/live", headers=anonymous).status_code == 200
    other = bearer(make_key(migrated, "other"))
    _protocol_error(client.get(url, headers=other), 404, f"no model with id '{small_model}'")
    _protocol_error(client.post(f"{url}/infer", json=_json_request(**GOOD), headers=other), 404, small_model)
    _protocol_error(client.get("/v2/models/mdl_0000000000000000/ready"), 404, "no model with id")
    _protocol_error(client.get(f"{url}/versions/2"), 404, "has no version '2'")


def test_export_refuses_another_format_and_another_owners_model(client, small_model, migrated):
    problem(client.get(f"/models/{small_model}/export", params={"format": "pmml"}), 422, "onnx", field="format")
    problem(client.get("/models/mdl_0000000000000000/export"), 404, field="model_id")
    other = bearer(make_key(migrated, "other"))
    problem(client.get(f"/models/{small_model}/export", headers=other), 404)


def test_an_array_model_takes_its_inputs_shaped_like_x(client, run_job):
    rng = np.random.default_rng(2)
    X = rng.integers(0, 256, size=(64, 1, 3, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, X=X, y=(X.reshape(64, -1).mean(axis=1) > 127).astype(np.int64))
    ds = upload(client, "tiny.npz", buf.getvalue()).json()["id"]
    model_id = run_job({"dataset_id": ds, "target": "y", "model": {"type": "mlp", "hidden_layers": [8]},
                        "training": {"epochs": 3}})
    meta = client.get(f"/v2/models/{model_id}").json()
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 1, 3, 3]}]
    images = X[:5].astype(np.float32)
    expected = client.post("/predict", json={"model_id": model_id, "inputs": images.tolist()}).json()
    request = {"inputs": [{"name": "inputs", "datatype": "FP32", "shape": [5, 1, 3, 3], "data": images.tolist()}]}
    answer = _outputs(client.post(f"/v2/models/{model_id}/infer", json=request))
    assert answer["probabilities"].tolist() == [[p[k] for k in ("0", "1")] for p in expected["probabilities"]]
    assert answer["predictions"].tolist() == expected["predictions"]
    session = ort.InferenceSession(client.get(f"/models/{model_id}/export").content)
    predictions, probabilities = session.run(None, {"inputs": images})
    assert predictions.tolist() == expected["predictions"]
    np.testing.assert_allclose(probabilities, answer["probabilities"], rtol=0, atol=TOLERANCE)
    request["inputs"][0]["shape"] = [5, 9]
    request["inputs"][0]["data"] = images.reshape(5, 9).tolist()
    _protocol_error(client.post(f"/v2/models/{model_id}/infer", json=request), 400,
                    "input 'inputs': shape [5, 9]; this model takes [N, 1, 3, 3]")


def test_readiness_names_a_database_that_is_not_migrated(tmp_path):
    from service.server.db import make_engine
    from service.server.inference import not_ready

    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        reason = not_ready(engine)
    finally:
        engine.dispose()
    assert reason is not None and "migrate" in reason
