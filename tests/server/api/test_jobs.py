import pytest

from tests.helpers import problem, upload


@pytest.fixture
def iris(client):
    return upload(client, "iris.csv").json()


def test_submit_returns_202_with_location_and_inferred_task(client, iris):
    resp = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["task"] == "classification"
    assert job["progress"] == {"epoch": 0, "epochs": 200, "step": None, "steps": None, "samples_per_second": None,
                               "eta_s": None}
    assert job["spec"]["features"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    # the default is the ensemble, resolved for 150 rows: 16 members over 4 folds, batches of 32
    assert job["spec"]["schema_version"] == 2
    assert job["spec"]["model"] == {"type": "ensemble", "hidden_layers": [64, 64], "activation": "relu",
                                    "dropout": None, "batch_norm": False, "members": 16, "folds": 4,
                                    "linear_skip": True, "linear_members": True, "dropout_range": [0.0, 0.3],
                                    "bins": 16}
    training = job["spec"]["training"]
    assert training["batch_size"] == 32 and training["optimizer"] == "adamw"
    assert training["learning_rate_range"] == [0.002, 0.02] and training["validation_fraction"] == 0.0


def test_one_mlp_resolves_to_exactly_the_lectures_defaults(client, iris):
    from service.training.loop import TrainConfig
    from service.training.nets import NetSpec

    job = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species", "model": {"type": "mlp"}}).json()
    model, training = job["spec"]["model"], job["spec"]["training"]
    net, config = NetSpec(), TrainConfig()
    assert (model["type"], tuple(model["hidden_layers"]), model["activation"], model["dropout"],
            model["batch_norm"]) == (net.type, net.hidden_layers, net.activation, net.dropout, net.batch_norm)
    assert {k: training[k] for k in ("epochs", "batch_size", "optimizer", "learning_rate", "momentum", "nesterov",
                                     "weight_decay", "seed", "early_stopping_patience", "early_stopping_metric")} \
        == {k: getattr(config, k) for k in ("epochs", "batch_size", "optimizer", "learning_rate", "momentum",
                                            "nesterov", "weight_decay", "seed", "early_stopping_patience",
                                            "early_stopping_metric")} | {"epochs": 300}
    assert training["validation_fraction"] == 0.2 and training["test_fraction"] == 0.0
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]


def test_regression_task_is_inferred_from_a_float_target(client):
    ds = upload(client, "diabetes.csv").json()
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "progression"}).json()
    assert job["task"] == "regression"


def test_whole_numbers_written_as_floats_are_classes(client):
    """An integer column with a missing value, as pandas writes it (1.0, 0.0, empty), is still a class column."""
    rows = "".join(f"{i * 0.1:.1f},{'' if i == 7 else i % 2}.0\n".replace(",.0", ",") for i in range(60))
    ds = upload(client, "binary.csv", ("x,passed\n" + rows).encode()).json()
    assert ds["columns"][1]["dtype"] == "double" and ds["columns"][1]["stats"]["whole_numbers"] is True
    job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "passed"}).json()
    assert job["task"] == "classification"
    assert client.post("/jobs", json={"dataset_id": ds["id"], "target": "x"}).json()["task"] == "regression"


@pytest.mark.parametrize(("patch", "status", "field", "fragment"), [
    ({"target": "colour"}, 422, "target", "available columns: 'sepal_length'"),
    ({"features": ["petal_length", "stem"]}, 422, "features.1", "feature column 'stem' is not in"),
    ({"dataset_id": "ds_ffffffffffffffff"}, 404, "dataset_id", "no data set with id"),
    ({"training": {"epochs": -5}}, 422, "training.epochs", "greater than or equal to 1"),
    ({"training": {"learning_rate": 0}}, 422, "training.learning_rate", "greater than 0"),
    ({"model": {"hidden_layers": [64, 0]}}, 422, "model.hidden_layers.1", "greater than or equal to 1"),
    ({"model": {"activation": "swish"}}, 422, "model.activation", "must be one of"),
    ({"training": {"epochs": 10, "lr": 0.1}}, 422, "training.lr", "unknown field"),
    ({"task": "regression"}, 422, "task", "regression needs a numeric target"),
    ({"training": {"early_stopping_metric": "val_r2"}}, 422, "training.early_stopping_metric", "not computed"),
    ({"device": "tpu"}, 422, "device", "String should match pattern"),
])
def test_invalid_specs_are_422_naming_the_field(client, iris, patch, status, field, fragment):
    spec = {"dataset_id": iris["id"], "target": "species", **patch}
    body = problem(client.post("/jobs", json=spec), status)
    assert any(e.get("field") == field for e in body["errors"]), body
    assert fragment in body["detail"] or any(fragment in e["message"] for e in body["errors"]), body
    assert client.get("/jobs").json()["total"] == 0
    assert client.get(f"/datasets/{iris['id']}").status_code == 200


def test_list_filters_and_paginates(client, iris):
    ids = [client.post("/jobs", json={"dataset_id": iris["id"], "target": "species"}).json()["id"] for _ in range(5)]
    client.post(f"/jobs/{ids[0]}/cancel")
    page = client.get("/jobs", params={"limit": 2, "offset": 0}).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    assert page["items"][0]["id"] == ids[-1]  # newest first
    queued = client.get("/jobs", params={"status": "queued"}).json()
    assert queued["total"] == 4 and ids[0] not in [j["id"] for j in queued["items"]]
    problem(client.get("/jobs", params={"status": "sleeping"}), 422)
    problem(client.get("/jobs", params={"limit": 0}), 422)


def test_cancel_queued_then_cancel_again_is_409(client, iris):
    job = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species"}).json()
    resp = client.post(f"/jobs/{job['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    body = problem(client.post(f"/jobs/{job['id']}/cancel"), 409)
    assert "already cancelled" in body["detail"]
    problem(client.post("/jobs/job_0000000000000000/cancel"), 404)


def test_gpu_request_waits_and_says_why(client, iris):
    job = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species", "device": "cuda"}).json()
    assert job["waiting_for"] == "waiting for a worker with a free CUDA GPU"


def test_unknown_route_and_method_use_the_same_error_shape(client):
    problem(client.get("/nothing-here"), 404)
    problem(client.delete("/jobs"), 405)


def test_health_and_readiness(client, migrated):
    from service.server.devices import discover
    from service.server.worker import Worker

    assert client.get("/healthz").json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "not ready", "detail": "no live worker: queued jobs will wait until one "
                                                                 "starts (`mlps worker`)"}
    worker = Worker(migrated, discover("cpu"))
    worker.start()
    try:
        assert client.get("/readyz").json() == {"status": "ready"}
    finally:
        worker.shutdown()
    assert client.get("/readyz").status_code == 503  # a stopped worker is not a live one


def test_readiness_says_when_the_disk_is_nearly_full(migrated):
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    full = migrated.model_copy(update={"min_free_bytes": 1 << 62})
    with TestClient(create_app(full)) as c:
        detail = c.get("/readyz").json()["detail"]
    assert "MB free, less than MLPS_MIN_FREE_BYTES" in detail and "no live worker" in detail


def test_api_refuses_to_start_on_an_unmigrated_database(settings):
    from fastapi.testclient import TestClient

    from service.server.api import create_app
    from service.server.db import SchemaNotReady

    with pytest.raises(SchemaNotReady, match="run `mlps migrate`"), TestClient(create_app(settings)):
        pass


def test_openapi_has_an_example_for_every_request_body(client):
    spec = client.get("/openapi.json").json()
    assert client.get("/docs").status_code == 200
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                ref = media.get("schema", {}).get("$ref", "")
                component = spec["components"]["schemas"].get(ref.split("/")[-1], {})
                assert "example" in media or "examples" in media or "examples" in component, (method, path, ctype)
