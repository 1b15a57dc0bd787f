"""Keys, owners and limits on the in-process API over a real migrated database (and a real worker where a model
is needed)."""

import hashlib
import io
import json
import re
import threading
import zipfile

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load
from typer.testing import CliRunner

from service.cli import app as cli
from service.server.api import create_app
from service.server.auth import UNAUTHORIZED
from tests.helpers import bearer, dataset_path, make_key, problem, upload, wait_for, wait_for_job

SHORT = {"epochs": 3, "batch_size": 16, "learning_rate": 0.01}
IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def app(migrated):
    return create_app(migrated)


def as_key(app, key: str | None) -> TestClient:
    return TestClient(app, headers=bearer(key) if key else {})


# ---------------------------------------------------------------- keys


def test_every_endpoint_but_health_needs_a_valid_key_and_failures_look_alike(app, migrated):
    revoked = make_key(migrated, "carol")
    runner = CliRunner()
    listed = runner.invoke(cli, ["keys", "list", "--json"], env={"MLPS_DATABASE_URL": migrated.database_url})
    carol = next(k for k in json.loads(listed.stdout) if k["name"] == "carol")
    assert runner.invoke(cli, ["keys", "revoke", carol["id"]],
                         env={"MLPS_DATABASE_URL": migrated.database_url}).exit_code == 0
    with TestClient(app) as c:
        # no key needed for either (no worker runs here, which /readyz says in a 503)
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code in (200, 503)
        assert c.get("/readyz").json()["status"] in ("ready", "not ready")
        attempts = {
            "no header": {},
            "other scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
            "not a key": {"Authorization": "Bearer hunter2"},
            "unknown key": bearer("mlps_" + "A" * 43),
            "revoked key": bearer(revoked),
            "empty bearer": {"Authorization": "Bearer "},
        }
        for what, headers in attempts.items():
            for method, path in (("GET", "/datasets"), ("POST", "/jobs"), ("GET", "/metrics"),
                                 ("GET", "/models/mdl_0000000000000000/download")):
                body = problem(c.request(method, path, headers=headers, json={}), 401)
                assert body["detail"] == UNAUTHORIZED, what
                assert body["type"] == "/problems/unauthorized"
        assert c.get("/datasets", headers=attempts["unknown key"]).headers["www-authenticate"] == "Bearer"


def test_keys_cli_prints_the_key_alone_and_stores_only_a_hash(migrated):
    runner = CliRunner()
    env = {"MLPS_DATABASE_URL": migrated.database_url}
    created = runner.invoke(cli, ["keys", "create", "--name", "alice"], env=env)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and re.fullmatch(r"mlps_[A-Za-z0-9_-]{43}", key)  # 256 random bits
    listed = runner.invoke(cli, ["keys", "list"], env={**env, "COLUMNS": "200"})
    assert listed.exit_code == 0 and "alice" in listed.stdout and key[:12] in listed.stdout
    assert key not in listed.stdout
    from sqlalchemy import create_engine, text

    engine = create_engine(migrated.database_url)
    with engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(text("SELECT prefix, key_hash FROM api_keys"))]
    engine.dispose()
    assert (key[:12], hashlib.sha256(key.encode()).hexdigest()) in stored
    assert all(key not in value for row in stored for value in row)
    bad = runner.invoke(cli, ["keys", "create", "--name", "no spaces please"], env=env)
    assert bad.exit_code == 2 and "key name" in bad.output
    unknown = runner.invoke(cli, ["keys", "revoke", "key_nope"], env=env)
    assert unknown.exit_code == 1 and "no key with id" in unknown.output

    with TestClient(create_app(migrated), headers=bearer(key)) as c:
        assert c.get("/datasets").status_code == 200
        assert runner.invoke(cli, ["keys", "revoke", key[:12]], env=env).exit_code == 0
        # Each API process re-checks a key it has seen at least once a second.
        refused = wait_for(lambda: (r := c.get("/datasets")).status_code == 401 and r, timeout=10,
                           what="the revoked key to be refused")
        assert problem(refused, 401)["detail"] == UNAUTHORIZED


def test_a_new_key_with_the_same_name_reaches_the_same_data(app, migrated):
    with as_key(app, make_key(migrated, "alice")) as first:
        ds = upload(first, "iris.csv").json()
    with as_key(app, make_key(migrated, "alice")) as rotated:
        assert rotated.get(f"/datasets/{ds['id']}").status_code == 200


# ---------------------------------------------------------------- owners


@pytest.fixture
def owners(app, migrated, worker):
    """alice with a data set, a finished job and its model; bob and an admin with nothing of their own."""
    alice = as_key(app, make_key(migrated, "alice")).__enter__()
    bob = as_key(app, make_key(migrated, "bob")).__enter__()
    admin = as_key(app, make_key(migrated, "root", admin=True)).__enter__()
    ds = upload(alice, "iris.csv").json()
    job = alice.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "training": SHORT}).json()
    assert worker.run_once() == job["id"]
    job = alice.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    hook = alice.post("/webhooks", json={"url": "https://hooks.example.invalid/alice", "events": ["job.failed"]})
    assert hook.status_code == 201, hook.text
    yield {"alice": alice, "bob": bob, "admin": admin, "ds": ds["id"], "job": job["id"], "model": job["model_id"],
           "worker": worker, "webhook": hook.json()["id"]}
    for c in (alice, bob, admin):
        c.__exit__(None, None, None)


def walk(ids: dict[str, str]) -> list[tuple[str, str, dict]]:
    """One request per endpoint about alice's things (the path template, then the concrete request)."""
    csv = dataset_path("iris.csv").read_bytes()
    return [
        ("GET", "/datasets/{dataset_id}", {"url": f"/datasets/{ids['ds']}"}),
        ("GET", "/datasets/{dataset_id}/preview", {"url": f"/datasets/{ids['ds']}/preview"}),
        ("GET", "/jobs/{job_id}", {"url": f"/jobs/{ids['job']}"}),
        ("GET", "/jobs/{job_id}/metrics", {"url": f"/jobs/{ids['job']}/metrics"}),
        ("GET", "/jobs/{job_id}/events", {"url": f"/jobs/{ids['job']}/events"}),
        ("GET", "/models/{model_id}", {"url": f"/models/{ids['model']}"}),
        ("GET", "/models/{model_id}/download", {"url": f"/models/{ids['model']}/download"}),
        ("POST", "/predict", {"url": "/predict", "json": {"model_id": ids["model"], "records": [IRIS_RECORD]}}),
        ("POST", "/models/{model_id}/embed", {"url": f"/models/{ids['model']}/embed",
                                               "json": {"records": [IRIS_RECORD]}}),
        ("POST", "/models/{model_id}/predict", {"url": f"/models/{ids['model']}/predict",
                                                 "files": {"file": ("iris.csv", csv, "text/csv")}}),
        ("GET", "/models/{model_id}/export", {"url": f"/models/{ids['model']}/export?format=onnx"}),
        ("PATCH", "/datasets/{dataset_id}", {"url": f"/datasets/{ids['ds']}", "json": {"name": "iris"}}),
        ("PATCH", "/jobs/{job_id}", {"url": f"/jobs/{ids['job']}", "json": {"tags": ["kept"]}}),
        # registry names live in their owner's namespace: alice's 'iris' is no name of bob's
        ("GET", "/registry/{name}", {"url": "/registry/iris"}),
        ("GET", "/registry/{name}/versions", {"url": "/registry/iris/versions"}),
        ("GET", "/registry/{name}/versions/{version}", {"url": "/registry/iris/versions/1"}),
        ("GET", "/registry/{name}/aliases/{alias}", {"url": "/registry/iris/aliases/production"}),
        ("GET", "/registry/{name}/aliases/{alias}/history", {"url": "/registry/iris/aliases/production/history"}),
        ("PUT", "/registry/{name}/aliases/{alias}", {"url": "/registry/iris/aliases/production",
                                                      "json": {"version": 1}}),
        ("POST", "/registry/{name}", {"url": "/registry/other", "json": {"model_id": ids["model"]}}),
        ("GET", "/webhooks/{webhook_id}", {"url": f"/webhooks/{ids['webhook']}"}),
        ("GET", "/webhooks/{webhook_id}/deliveries", {"url": f"/webhooks/{ids['webhook']}/deliveries"}),
        ("PATCH", "/webhooks/{webhook_id}", {"url": f"/webhooks/{ids['webhook']}", "json": {"description": "ci"}}),
        ("POST", "/webhooks/{webhook_id}/test", {"url": f"/webhooks/{ids['webhook']}/test"}),
        # Changes last: cancel of a finished job is a 409 for its owner, delete removes the data set.
        ("POST", "/jobs/{job_id}/cancel", {"url": f"/jobs/{ids['job']}/cancel"}),
        ("DELETE", "/registry/{name}/aliases/{alias}", {"url": "/registry/iris/aliases/production"}),
        ("DELETE", "/models/{model_id}", {"url": f"/models/{ids['model']}"}),
        ("DELETE", "/datasets/{dataset_id}", {"url": f"/datasets/{ids['ds']}"}),
        ("DELETE", "/webhooks/{webhook_id}", {"url": f"/webhooks/{ids['webhook']}"}),
    ]


LISTS = [("GET", "/datasets"), ("GET", "/jobs"), ("GET", "/models"), ("GET", "/webhooks")]
OTHERS = [("POST", "/datasets"), ("POST", "/jobs"), ("POST", "/webhooks"), ("GET", "/metrics"), ("GET", "/workers"),
          ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/registry"),
          # two of alice's jobs to compare, and searches (whose trials would join alice's job list): their owner
          # rules are tested in test_jobs.py / test_searches.py
          ("GET", "/jobs/compare"), ("POST", "/searches"), ("GET", "/searches"), ("GET", "/searches/{search_id}"),
          ("PATCH", "/searches/{search_id}"), ("GET", "/searches/{search_id}/trials"),
          ("POST", "/searches/{search_id}/cancel"), ("GET", "/searches/{search_id}/events")]


def test_another_owner_gets_404_everywhere_and_an_admin_sees_everything(app, owners):
    alice, bob, admin = owners["alice"], owners["bob"], owners["admin"]
    requests = walk(owners)
    assert alice.post("/registry/iris", json={"model_id": owners["model"]}).status_code == 201
    assert alice.put("/registry/iris/aliases/production", json={"version": 1}).status_code == 200
    # Every route of the API is walked here or below: a new endpoint must join this test.
    routes = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert routes == {(m, p) for m, p, _ in requests} | set(LISTS) | set(OTHERS)

    for method, template, req in requests:
        req = dict(req)
        url = req.pop("url")
        body = problem(bob.request(method, url, **req), 404)
        assert "no " in body["detail"] and ("data set" in body["detail"] or "job" in body["detail"]
                                            or "model" in body["detail"]
                                            or "webhook" in body["detail"]), (template, body)
    for method, template, req in requests:
        req = dict(req)
        url = req.pop("url")
        # A finished job cannot be cancelled; a classifier has no embedding: both say so to those who may see them.
        expected = {"/jobs/{job_id}/cancel": 409, "/models/{model_id}/embed": 422, "/webhooks/{webhook_id}/test": 202}
        if (method, template) == ("POST", "/registry/{name}"):
            assert alice.request(method, url, **req).status_code == 201
            problem(admin.request(method, url, **req), 422, "belongs to alice")  # an admin registers its own only
            continue
        if method == "DELETE":
            continue  # the owner's delete is checked below, once the admin has looked too
        assert alice.request(method, url, **req).status_code == expected.get(template, 200), template
        # registry names are the key owner's own, an admin's too: alice's names are none of the admin's
        seen_by_admin = 404 if template.startswith("/registry/") else expected.get(template, 200)
        assert admin.request(method, url, **req).status_code == seen_by_admin, template

    for _, path in LISTS:
        assert bob.get(path).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
        assert alice.get(path).json()["total"] == 1 and admin.get(path).json()["total"] == 1
    refused = bob.post("/jobs", json={"dataset_id": owners["ds"], "target": "species"})
    assert problem(refused, 404)["errors"] == [{"field": "dataset_id", "message": "unknown data set"}]
    assert problem(bob.get("/metrics"), 403)["detail"] == "this needs an admin key"
    assert admin.get("/metrics").status_code == 200
    assert bob.get("/workers").status_code == 200
    # bob's own upload is his: alice does not see it.
    mine = upload(bob, "xor.csv").json()
    assert alice.get(f"/datasets/{mine['id']}").status_code == 404
    assert alice.delete("/registry/iris/aliases/production").status_code == 204
    assert alice.delete(f"/models/{owners['model']}").status_code == 204
    assert alice.delete(f"/datasets/{owners['ds']}").status_code == 204
    assert alice.delete(f"/webhooks/{owners['webhook']}").status_code == 204


def test_workers_show_running_jobs_to_their_owner_and_admins_only(app, owners):
    alice, bob, admin = owners["alice"], owners["bob"], owners["admin"]
    long = {"epochs": 100_000, "batch_size": 1, "early_stopping_patience": 0}  # one mlp, below
    job = alice.post("/jobs", json={"dataset_id": owners["ds"], "target": "species", "model": {"type": "mlp"},
                                    "training": long}).json()
    supervisor = threading.Thread(target=owners["worker"].run_once, kwargs={"timeout_s": 120})
    supervisor.start()
    wait_for_job(alice, job["id"], {"running"})

    def running_jobs(c):
        return [j for w in c.get("/workers").json()["items"] for j in w["running_jobs"]]

    assert wait_for(lambda: job["id"] in running_jobs(admin), timeout=30, what="the admin to see the job")
    assert job["id"] in running_jobs(alice) and running_jobs(bob) == []
    alice.post(f"/jobs/{job['id']}/cancel")
    supervisor.join(120)
    assert wait_for_job(alice, job["id"])["status"] == "cancelled"


def test_model_download_is_safetensors_and_json(owners):
    resp = owners["alice"].get(f"/models/{owners['model']}/download")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(resp.content))
    assert sorted(archive.namelist()) == ["model.json", "weights.safetensors"]
    weights = load(archive.read("weights.safetensors"))
    meta = json.loads(archive.read("model.json"))
    assert meta["target"]["labels"] == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    # four numeric columns, each its standardised value and 15 piecewise-linear bins (iris has few distinct values)
    assert meta["spec"]["model"]["type"] == "ensemble"
    assert meta["n_inputs"] == sum(1 + len(f["bins"]) - 1 for f in meta["preprocessing"]["features"]) > 4
    assert [f["name"] for f in meta["features"]] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    from service.training.nets import EnsembleNet

    model = meta["spec"]["model"]
    net = EnsembleNet(meta["n_inputs"], meta["n_outputs"], meta["ensemble"]["members"], tuple(model["hidden_layers"]),
                      model["activation"], model["linear_skip"])
    net.load_state_dict(weights)  # strict: the archive alone rebuilds the trained network
    assert len(meta["ensemble"]["kept"]) == meta["ensemble"]["members"] == net.member_weights.numel()


# ---------------------------------------------------------------- limits


def limited(migrated, **limits) -> TestClient:
    return TestClient(create_app(migrated.model_copy(update=limits)),
                      headers=bearer(make_key(migrated, "alice")))


def test_rows_and_columns_per_data_set(migrated):
    with limited(migrated, max_rows=100, max_columns=5) as c:
        body = problem(upload(c, "iris.csv", status=None), 422)
        assert "more than 100 rows" in body["detail"]
        assert problem(upload(c, "breast_cancer.csv", status=None), 422)["detail"].endswith("at most 5 are accepted")
        assert c.get("/datasets").json()["total"] == 0
        assert not list((migrated.data_dir / "tmp").glob("*"))
        upload(c, "xor.csv")


@pytest.mark.parametrize(("limits", "patch", "field", "fragment"), [
    ({"max_layers": 2}, {"model": {"hidden_layers": [8, 8, 8]}}, "model.hidden_layers", "at most 2"),
    ({"max_layer_width": 32}, {"model": {"hidden_layers": [16, 64]}}, "model.hidden_layers.1", "at most 32"),
    ({"max_parameters": 1000}, {"model": {"type": "mlp", "hidden_layers": [64, 64]}}, "model.hidden_layers",
     "about 4,675 parameters"),
    # 16 members × (68·8+8 + 8·3+3 + a 68·3+3 linear path): 4 numeric columns × (value + 16 bins) inputs
    ({"max_parameters": 1000}, {"model": {"hidden_layers": [8]}}, "model.hidden_layers",
     "about 12,576 parameters"),
    ({"max_epochs": 10}, {"training": {"epochs": 11}}, "training.epochs", "at most 10"),
    ({"max_batch_size": 64}, {"training": {"batch_size": 128}}, "training.batch_size", "at most 64"),
    ({"max_runtime_s": 60}, {"max_runtime_s": 61}, "max_runtime_s", "at most 60 s"),
])
def test_spec_limits_are_422_naming_the_field(migrated, limits, patch, field, fragment):
    with limited(migrated, **limits) as c:
        ds = upload(c, "iris.csv").json()
        body = problem(c.post("/jobs", json={"dataset_id": ds["id"], "target": "species", **patch}), 422)
        assert body["errors"][0]["field"] == field and fragment in body["detail"], body
        assert c.get("/jobs").json()["total"] == 0


def test_the_parameter_estimate_counts_a_bin_per_level_of_a_whole_number_column(migrated):
    # 16 members × (48·8+8 + 8·1+1 + a 48·1+1 linear path): inputs are school's value and 30 level bins, noise's
    # value and 16 quantile bins
    rows = "".join(f"{1 + i % 30},{(i * 7919) % 1000 / 999:.4f},{i % 30 * 0.5:.2f}\n" for i in range(1500))
    with limited(migrated, max_parameters=1000) as c:
        ds = upload(c, "schools.csv", ("school,noise,score\n" + rows).encode()).json()
        body = problem(c.post("/jobs", json={"dataset_id": ds["id"], "target": "score",
                                             "model": {"hidden_layers": [8]}}), 422)
        assert "about 7,200 parameters" in body["detail"], body


def test_runtime_ceiling_applies_to_jobs_that_set_none(migrated):
    with limited(migrated, max_runtime_s=60, max_parameters=100) as c:
        ds = upload(c, "iris.csv").json()
        small = c.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                      "model": {"type": "mlp", "hidden_layers": [8]}})
        assert small.status_code == 202, small.text  # 4*8+8 + 8*3+3 = 67 parameters
        assert small.json()["spec"]["max_runtime_s"] == 60


def test_parameter_estimate_matches_the_network_built(migrated):
    from service.schemas import JobCreate
    from service.server.jobs import estimate_parameters
    from service.server.spec import resolve
    from service.server.tables import Dataset
    from service.training.nets import EnsembleNet, NetSpec, build_network

    columns = [{"name": f"x{i}", "kind": "numeric", "n_unique": 10} for i in range(7)]
    columns.append({"name": "y", "kind": "categorical", "n_unique": 4})
    dataset = Dataset(columns=columns)
    features = [f"x{i}" for i in range(7)]
    for model, task, targets, n_out in [
        ({"type": "mlp", "hidden_layers": [16, 8], "batch_norm": True}, "classification", ["y"], 4),
        ({"type": "mlp", "hidden_layers": [5]}, "regression", ["x0"], 1),
        ({"type": "logistic_regression"}, "classification", ["y"], 4),
        ({"type": "autoencoder", "hidden_layers": [6, 3], "batch_norm": True}, "autoencoder", [], 7),
        ({"type": "ensemble", "hidden_layers": [6], "members": 8}, "classification", ["y"], 4),
    ]:
        spec = JobCreate(dataset_id="ds", target=targets[0] if targets else None, model=model)
        feats = features if "x0" not in targets else features[1:]
        stored = resolve(spec, targets=targets, features=feats, task=task, n_rows=100, max_runtime_s=60)
        if model["type"] == "ensemble":
            built = EnsembleNet(len(feats) * (1 + stored.model.bins), n_out, 8, (6,), "relu", linear_skip=True)
        else:
            built = build_network(NetSpec.from_dict(spec.model.model_dump(exclude_none=True)), len(feats), n_out)
        assert estimate_parameters(stored, dataset) == sum(p.numel() for p in built.parameters())


def test_queued_and_running_jobs_per_owner_are_capped_with_429(migrated):
    with limited(migrated, max_active_jobs=2) as c:
        ds = upload(c, "iris.csv").json()
        submit = {"dataset_id": ds["id"], "target": "species"}
        first = c.post("/jobs", json=submit).json()
        assert c.post("/jobs", json=submit).status_code == 202
        body = problem(c.post("/jobs", json=submit), 429)
        assert body["detail"] == ("alice already has 2 queued or running jobs, the most this server accepts; wait "
                                  "for some to finish or cancel them")
        with TestClient(c.app, headers=bearer(make_key(migrated, "bob"))) as bob:
            upload(bob, "iris.csv")  # other owners are not held back
        c.post(f"/jobs/{first['id']}/cancel")
        assert c.post("/jobs", json=submit).status_code == 202


def test_requests_per_second_per_key_get_429_with_retry_after(migrated):
    with limited(migrated, rate_limit_per_s=0.5, rate_limit_burst=3) as c:
        assert [c.get("/datasets").status_code for _ in range(3)] == [200, 200, 200]
        resp = c.get("/datasets")
        body = problem(resp, 429)
        assert resp.headers["retry-after"] == "2"
        assert "more than 0.5 requests per second with this key" in body["detail"]
        assert c.get("/healthz").status_code == 200  # health checks are not keyed
        with TestClient(c.app, headers=bearer(make_key(migrated, "bob"))) as bob:
            assert bob.get("/datasets").status_code == 200  # each key has its own budget


def test_data_from_before_keys_belongs_to_the_admin_owner(settings):
    from alembic import command
    from sqlalchemy import create_engine, text

    from service.server.db import alembic_config, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.database_url), "20261126_0002")
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO datasets (id, name, format, n_rows, n_columns, columns, size_bytes, sha256, "
                          "created_at) VALUES ('ds_old', 'old', 'csv', 1, 1, '[]', 1, 'x', '2026-01-01 00:00:00')"))
    migrate(settings.database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT owner FROM datasets WHERE id = 'ds_old'")).scalar_one() == "admin"
    engine.dispose()
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "admin"))) as c:
        assert c.get("/datasets/ds_old").json()["name"] == "old"
