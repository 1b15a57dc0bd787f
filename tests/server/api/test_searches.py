"""/searches and the job labels and comparison it brings, in-process over a real migrated SQLite file: every bad
input answered with the field at fault, owners kept apart, trials as real jobs, names, tags, notes and compare."""

import pytest
from fastapi.testclient import TestClient

from service.server.api import create_app
from service.server.config import Settings
from service.server.db import make_engine, make_sessionmaker
from service.server.searches import MAX_ACTIVE_SEARCHES, drive_all
from tests.helpers import bearer, make_key, problem, upload


@pytest.fixture
def iris(client):
    return upload(client, "iris.csv").json()


def body(iris, **changes):
    """A small valid search on iris: two learning rates by two layer lists, a grid of four."""
    request = {"spec": {"dataset_id": iris["id"], "target": "species", "model": {"type": "mlp"},
                        "training": {"epochs": 3}},
               "space": {"training.learning_rate": {"type": "choice", "values": [0.01, 0.05]},
                         "model.hidden_layers": {"type": "choice", "values": [[8], [16, 16]]}},
               "sampler": "grid", "metric": "val_accuracy", "parallelism": 2}
    request.update(changes)
    return request


def test_a_grid_search_queues_its_first_trials_as_real_jobs(client, iris):
    resp = client.post("/searches", json=body(iris, name="lr-sweep", tags=["iris", "v1"]))
    assert resp.status_code == 201, resp.text
    search = resp.json()
    assert resp.headers["location"] == f"/searches/{search['id']}"
    assert search["status"] == "running" and search["direction"] == "maximize" and search["task"] == "classification"
    assert search["progress"] == {"trials_done": 0, "trials_running": 2, "trials_budget": 4,
                                  "elapsed_s": search["progress"]["elapsed_s"], "max_wall_s": None}
    trials = client.get(f"/searches/{search['id']}/trials").json()
    assert [t["number"] for t in trials] == [0, 1] and all(t["state"] == "running" for t in trials)
    jobs = client.get("/jobs", params={"search_id": search["id"]}).json()
    assert jobs["total"] == 2
    by_id = {j["id"]: j for j in jobs["items"]}
    for trial in trials:
        job = by_id[trial["job_id"]]
        assert job["status"] == "queued" and job["search_id"] == search["id"]
        assert job["name"] == f"lr-sweep #{trial['number']}" and job["tags"] == ["iris", "v1"]
        assert job["spec"]["training"]["learning_rate"] == trial["params"]["training.learning_rate"]
        assert job["spec"]["model"]["hidden_layers"] == trial["params"]["model.hidden_layers"]
    assert len({str(t["params"]) for t in trials}) == 2  # two different grid points


def test_grid_search_is_not_driven_past_its_parallelism(client, iris, migrated):
    search = client.post("/searches", json=body(iris)).json()
    engine = make_engine(migrated.database_url)
    try:
        for _ in range(3):  # nothing ended: another round adds no trial
            drive_all(sessions=make_sessionmaker(engine), settings=migrated)
    finally:
        engine.dispose()
    assert len(client.get(f"/searches/{search['id']}/trials").json()) == 2


SPACE_ERRORS = [
    ({"training.learnin_rate": {"type": "float", "low": 0.001, "high": 0.1}}, "space.training.learnin_rate",
     "did you mean 'training.learning_rate'"),
    ({"model.colour": {"type": "choice", "values": [1]}}, "space.model.colour", "is not a field of the job spec"),
    ({"dataset_id": {"type": "choice", "values": ["ds_0"]}}, "space.dataset_id", "not how"),
    ({"training.learning_rate": {"type": "float", "low": 0.0, "high": 0.1}}, "space.training.learning_rate",
     "greater than 0"),
    ({"model.dropout": {"type": "float", "low": 0.1, "high": 1.0}}, "space.model.dropout", "less than 1"),
    ({"training.epochs": {"type": "float", "low": 1, "high": 10}}, "space.training.epochs", "valid integer"),
    ({"training.batch_size": {"type": "int", "low": 0, "high": 64}}, "space.training.batch_size",
     "greater than or equal to 1"),
    ({"model.hidden_layers": {"type": "choice", "values": []}}, "space.model.hidden_layers",
     "at least 1 item"),
    ({"model.hidden_layers": {"type": "choice", "values": [[8], [8]]}}, "space.model.hidden_layers.values",
     "more than once"),
    ({"model.hidden_layers": {"type": "choice", "values": [[8], [0]]}}, "space.model.hidden_layers",
     "greater than or equal to 1"),
    ({"model.hidden_layers": {"type": "choice", "values": [[8], [20000]]}}, "space.model.hidden_layers",
     "less than or equal to 16384"),
    ({"model.activation": {"type": "choice", "values": ["relu", "threshold"]}}, "space.model.activation",
     "zero gradient"),
    ({"training.learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}, "space.training.learning_rate.low",
     "above high"),
    ({"training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
     "space.training.weight_decay.low", "log range needs low above 0"),
    ({"training.batch_size": {"type": "int", "low": 8, "high": 60, "step": 8}}, "space.training.batch_size.high",
     "multiple of step"),
]


@pytest.mark.parametrize(("space", "field", "fragment"), SPACE_ERRORS, ids=[f for _, f, _ in SPACE_ERRORS])
def test_a_bad_space_is_422_naming_the_parameter(client, iris, space, field, fragment):
    problem(client.post("/searches", json=body(iris, space=space, sampler="random", budget={"trials": 4})), 422,
            fragment, field=field)


@pytest.mark.parametrize(("changes", "status", "field", "fragment"), [
    ({"sampler": "grid", "space": {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1}}}, 422,
     "space.training.learning_rate", "every combination of choices"),
    ({"sampler": "random"}, 422, "budget", "budget.trials, budget.max_wall_s or both"),
    ({"sampler": "random", "budget": {"trials": 5000}}, 422, "budget.trials", "less than or equal to 1000"),
    ({"budget": {"max_wall_s": 10**9}}, 422, "budget.max_wall_s", "less than or equal to"),
    ({"parallelism": 101}, 422, "parallelism", "at most 100 queued or running jobs"),
    ({"metric": "val_rmse"}, 422, "metric", "not a validation metric of classification"),
    ({"sampler": "annealing"}, 422, "sampler", "'grid', 'random' or 'tpe'"),
    ({"spec": {"dataset_id": "ds_ffffffffffffffff", "target": "species"}}, 404, "spec.dataset_id",
     "no data set with id"),
    ({"space": {"training.learning_rate": {"type": "choice", "values": [0.01]}}, "surprise": 1}, 422, "surprise",
     "unknown field"),
])
def test_bad_search_requests_are_answered_with_the_field(client, iris, changes, status, field, fragment):
    problem(client.post("/searches", json=body(iris, **changes)), status, fragment, field=field)


def test_a_base_spec_error_names_the_spec_field(client, iris):
    request = body(iris)
    request["spec"]["target"] = "colour"
    problem(client.post("/searches", json=request), 422, "target column 'colour'", field="spec.target")


def test_a_grid_larger_than_the_trial_limit_is_refused(client, iris):
    space = {f"training.{f}": {"type": "choice", "values": v} for f, v in (
        ("learning_rate", [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
        ("batch_size", [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]),
        ("momentum", [0.0, 0.5, 0.9, 0.95, 0.99]),
        ("seed", [0, 1, 2]))}
    problem(client.post("/searches", json=body(iris, space=space)), 422, "1,500 combinations", field="space")


def test_searches_count_against_the_owners_limit(client, iris):
    one = {"training.learning_rate": {"type": "choice", "values": [0.01]}}
    for _ in range(MAX_ACTIVE_SEARCHES):
        assert client.post("/searches", json=body(iris, space=one, parallelism=1)).status_code == 201
    problem(client.post("/searches", json=body(iris, space=one, parallelism=1)), 429, "running searches")


def test_trials_wait_for_the_owners_active_job_limit_instead_of_failing(tmp_path, migrated):
    settings = Settings(**{**migrated.model_dump(), "max_active_jobs": 2})
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "ann"))) as ann:
        iris = upload(ann, "iris.csv").json()
        other = ann.post("/jobs", json={"dataset_id": iris["id"], "target": "species"}).json()
        search = ann.post("/searches", json=body(iris, parallelism=2)).json()
        assert search["progress"]["trials_running"] == 1  # one slot left of two
        assert ann.post(f"/jobs/{other['id']}/cancel").status_code == 202
        engine = make_engine(settings.database_url)
        try:
            drive_all(sessions=make_sessionmaker(engine), settings=settings)
        finally:
            engine.dispose()
        assert ann.get(f"/searches/{search['id']}").json()["progress"]["trials_running"] == 2


def test_other_owners_searches_are_404(client, iris, migrated):
    search = client.post("/searches", json=body(iris, name="mine")).json()
    with TestClient(create_app(migrated), headers=bearer(make_key(migrated, "bob"))) as bob:
        for method, path in (("GET", ""), ("GET", "/trials"), ("POST", "/cancel"), ("GET", "/events")):
            problem(bob.request(method, f"/searches/{search['id']}{path}"), 404, "no search with id",
                    field="search_id")
        problem(bob.patch(f"/searches/{search['id']}", json={"name": "x"}), 404, "no search", field="search_id")
        assert bob.get("/searches").json()["total"] == 0
        # nor can bob start one on the admin's data set
        problem(bob.post("/searches", json=body(iris)), 404, "no data set", field="spec.dataset_id")
    assert client.get("/searches").json()["total"] == 1


def test_cancel_stops_every_trial_and_a_second_cancel_is_409(client, iris):
    search = client.post("/searches", json=body(iris)).json()
    resp = client.post(f"/searches/{search['id']}/cancel")
    assert resp.status_code == 202, resp.text
    cancelled = resp.json()
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by request"
    assert cancelled["progress"]["trials_running"] == 0 and cancelled["progress"]["trials_done"] == 2
    trials = client.get(f"/searches/{search['id']}/trials").json()
    assert {t["state"] for t in trials} == {"cancelled"} and {t["job_status"] for t in trials} == {"cancelled"}
    problem(client.post(f"/searches/{search['id']}/cancel"), 409, "already cancelled")
    # the stream of an ended search sends it once and ends
    with client.stream("GET", f"/searches/{search['id']}/events") as stream:
        text = "".join(stream.iter_text())
    assert text.count("event: search") == 1 and '"status":"cancelled"' in text


def test_names_tags_and_notes_on_searches_and_jobs_and_the_lists_filter_by_them(client, iris):
    search = client.post("/searches", json=body(iris, tags=["sweep"])).json()
    resp = client.patch(f"/searches/{search['id']}", json={"name": "first", "tags": ["a_b", "c"], "notes": "try"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["name"], resp.json()["tags"], resp.json()["notes"]) == ("first", ["a_b", "c"], "try")
    assert client.get("/searches", params={"tag": "a_b"}).json()["total"] == 1
    assert client.get("/searches", params={"tag": "aXb"}).json()["total"] == 0  # _ is no wildcard
    assert client.get("/searches", params={"name": "first"}).json()["total"] == 1
    job = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species"}).json()
    patched = client.patch(f"/jobs/{job['id']}", json={"name": "baseline", "tags": ["gold"], "notes": "default"})
    assert patched.status_code == 200, patched.text
    assert {k: patched.json()[k] for k in ("name", "tags", "notes")} == {"name": "baseline", "tags": ["gold"],
                                                                      "notes": "default"}
    assert client.patch(f"/jobs/{job['id']}", json={"notes": None}).json()["notes"] is None
    assert client.get(f"/jobs/{job['id']}").json()["name"] == "baseline"  # fields left out are kept
    assert [j["id"] for j in client.get("/jobs", params={"tag": "gold"}).json()["items"]] == [job["id"]]
    assert [j["id"] for j in client.get("/jobs", params={"name": "baseline"}).json()["items"]] == [job["id"]]
    assert client.get("/jobs", params={"tag": "sweep"}).json()["total"] == 2  # the search's trials
    problem(client.patch(f"/jobs/{job['id']}", json={"tags": ["no spaces"]}), 422, "pattern", field="tags.0")
    problem(client.patch(f"/jobs/{job['id']}", json={"name": ""}), 422, "at least 1 character", field="name")
    problem(client.patch(f"/jobs/{job['id']}", json={"owner": "bob"}), 422, "unknown field", field="owner")
    problem(client.patch("/jobs/job_ffffffffffffffff", json={"name": "x"}), 404, "no job", field="job_id")
    problem(client.get("/jobs", params={"tag": "bad tag"}), 422, "pattern", field="tag")


def test_compare_aligns_histories_and_names_the_spec_differences(client, iris, worker):
    a = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species", "model": {"type": "mlp"},
                                   "training": {"epochs": 3, "early_stopping_patience": 0}}).json()
    b = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species", "model": {"type": "mlp"},
                                   "training": {"epochs": 5, "learning_rate": 0.01,
                                                "early_stopping_patience": 0}}).json()
    assert worker.run_once() == a["id"] and worker.run_once() == b["id"]
    resp = client.get("/jobs/compare", params={"ids": f"{a['id']},{b['id']}"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert [j["id"] for j in answer["jobs"]] == [a["id"], b["id"]]
    assert [j["epochs_run"] for j in answer["jobs"]] == [3, 5]
    assert all(j["status"] == "succeeded" and "val_accuracy" in j["metrics"] for j in answer["jobs"])
    loss = next(h for h in answer["histories"] if h["metric"] == "val_loss")
    assert loss["epochs"] == [1, 2, 3, 4, 5]
    assert len(loss["values"][a["id"]]) == 5 and loss["values"][a["id"]][3:] == [None, None]
    metrics_b = [e["metrics"]["val_loss"] for e in client.get(f"/jobs/{b['id']}/metrics").json()["epochs"]]
    assert loss["values"][b["id"]] == metrics_b
    differences = {d["field"]: d["values"] for d in answer["differences"]}
    assert set(differences) == {"training.epochs", "training.learning_rate"}
    assert differences["training.epochs"] == {a["id"]: 3, b["id"]: 5}
    assert differences["training.learning_rate"] == {a["id"]: 0.001, b["id"]: 0.01}


def test_compare_refuses_too_few_repeated_unknown_and_others_jobs(client, iris, migrated):
    a = client.post("/jobs", json={"dataset_id": iris["id"], "target": "species"}).json()
    problem(client.get("/jobs/compare", params={"ids": a["id"]}), 422, "give 2 to 20", field="ids")
    problem(client.get("/jobs/compare", params={"ids": f"{a['id']},{a['id']}"}), 422, "with repeats", field="ids")
    problem(client.get("/jobs/compare", params={"ids": f"{a['id']},job_ffffffffffffffff"}), 404, "no job",
            field="job_id")
    problem(client.get("/jobs/compare"), 422, "Field required", field="ids")
    with TestClient(create_app(migrated), headers=bearer(make_key(migrated, "bob"))) as bob:
        ds = upload(bob, "iris.csv").json()
        own = bob.post("/jobs", json={"dataset_id": ds["id"], "target": "species"}).json()
        problem(bob.get("/jobs/compare", params={"ids": f"{own['id']},{a['id']}"}), 404, "no job", field="job_id")
