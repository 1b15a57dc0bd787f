"""The search driver (service.server.searches) over a real migrated SQLite file: trials to the budget with a real
worker, pruning from the jobs' epoch rows, racing drivers that never duplicate a trial, the wall-time budget, and
trials whose parameters make a spec the server refuses."""

import contextlib
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.server import queue
from service.server.db import make_engine, make_sessionmaker, session_scope
from service.server.errors import Conflict
from service.server.searches import drive_all, searchable_fields
from service.server.tables import Job, Model, SearchTrial
from tests.helpers import upload, wait_for


@pytest.fixture
def sessions(migrated):
    engine = make_engine(migrated.database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def iris(client):
    return upload(client, "iris.csv").json()


def search_of(iris, space, **changes):
    request = {"spec": {"dataset_id": iris["id"], "target": "species", "model": {"type": "mlp"},
                        "training": {"epochs": 3, "early_stopping_patience": 0}},
               "space": space, "sampler": "grid", "metric": "val_accuracy", "parallelism": 2}
    return request | changes


def test_the_searchable_fields_are_the_job_specs_own():
    fields = searchable_fields()
    assert {"training.learning_rate", "model.hidden_layers", "model.dropout", "training.batch_size", "task"} \
        <= set(fields)
    assert not any(f.startswith(("dataset_id", "target", "features")) for f in fields)


def test_a_grid_search_runs_every_point_once_and_its_model_is_the_best_trials(client, iris, worker, sessions,
                                                                             migrated):
    space = {"training.learning_rate": {"type": "choice", "values": [0.001, 0.05]},
             "model.hidden_layers": {"type": "choice", "values": [[4], [16, 16]]}}
    search = client.post("/searches", json=search_of(iris, space, name="grid", refit=True)).json()
    while client.get(f"/searches/{search['id']}").json()["status"] == "running":
        worker.run_once()
        drive_all(sessions=sessions, settings=migrated)
    final = client.get(f"/searches/{search['id']}").json()
    trials = client.get(f"/searches/{search['id']}/trials").json()
    assert final["status"] == "succeeded" and final["progress"]["trials_done"] == 4
    assert sorted((t["params"]["training.learning_rate"], t["params"]["model.hidden_layers"]) for t in trials) == \
        [(0.001, [4]), (0.001, [16, 16]), (0.05, [4]), (0.05, [16, 16])]
    jobs = {j["id"]: j for j in client.get("/jobs", params={"search_id": search["id"]}).json()["items"]}
    assert all(t["state"] == "complete" and t["value"] == jobs[t["job_id"]]["metrics"]["val_accuracy"]
               for t in trials)
    values = [t["value"] for t in final["leaderboard"]]
    assert values == sorted(values, reverse=True) and len(values) == 4
    best = max(trials, key=lambda t: (t["value"], -t["number"]))
    assert final["best"]["number"] == best["number"]
    assert final["model_id"] == jobs[best["job_id"]]["model_id"] is not None
    assert all(t["epochs"] == 3 and t["duration_s"] > 0 for t in final["leaderboard"])
    # the refit: the best configuration again, on every row, for the epochs the best trial kept
    refit = client.get(f"/jobs/{final['refit_job_id']}").json()
    assert refit["name"] == "grid refit" and refit["search_id"] == search["id"]
    assert refit["id"] not in {t["job_id"] for t in trials}
    kept = jobs[best["job_id"]]["result"]["best_epoch"] or 3
    training = refit["spec"]["training"]
    assert (training["validation_fraction"], training["test_fraction"], training["epochs"]) == (0.0, 0.0, kept)
    assert training["learning_rate"] == best["params"]["training.learning_rate"]
    assert refit["spec"]["model"]["hidden_layers"] == best["params"]["model.hidden_layers"]
    assert worker.run_once() == refit["id"]
    after = client.get(f"/searches/{search['id']}").json()
    assert after["refit_model_id"] == client.get(f"/jobs/{refit['id']}").json()["model_id"] is not None
    assert after["model_id"] == final["model_id"]  # the search's model stays the best trial's


def _run_trial(sessions, job_id, losses, *, finish=True):
    """What a worker does to a job, through the queue: claim it, record its epochs' val_loss, succeed."""
    with session_scope(sessions) as s:
        claim = queue.claim_next_job(session=s, worker_id="w-test", device_requests=["auto", "cpu"], lease_s=30)
        assert claim is not None and claim.job_id == job_id
        queue.start_attempt(session=s, job_id=job_id, token=claim.token, device="cpu")
        queue.record_epochs(session=s, job_id=job_id, token=claim.token, lease_s=30,
                            rows=[(e, {"val_loss": v}) for e, v in enumerate(losses, start=1)])
        if finish:
            job = s.get(Job, job_id)
            model = Model(id=queue.new_id("mdl"), job_id=job_id, dataset_id=job.dataset_id, model_type="mlp",
                          task="classification", target="species", features=[], labels=None,
                          metrics={"val_loss": losses[-1]}, size_bytes=1)
            queue.succeed(session=s, job_id=job_id, token=claim.token, model=model,
                          result={"metrics": {"val_loss": losses[-1]}})
    return claim.token


@pytest.mark.parametrize("pruner", [{"type": "median", "startup_trials": 1, "warmup_epochs": 0},
                                    {"type": "successive_halving", "warmup_epochs": 1, "reduction_factor": 2}])
def test_a_poor_trial_is_pruned_on_its_epochs_and_its_job_cancelled(client, iris, sessions, migrated, pruner):
    space = {"training.learning_rate": {"type": "choice", "values": [0.01, 0.02, 0.03]}}
    search = client.post("/searches", json=search_of(iris, space, parallelism=1, metric="val_loss",
                                                     pruner=pruner)).json()
    first = client.get(f"/searches/{search['id']}/trials").json()[0]
    _run_trial(sessions, first["job_id"], [0.5, 0.4, 0.3])
    drive_all(sessions=sessions, settings=migrated)
    second = client.get(f"/searches/{search['id']}/trials").json()[1]
    token = _run_trial(sessions, second["job_id"], [2.0, 2.0], finish=False)
    drive_all(sessions=sessions, settings=migrated)
    trials = client.get(f"/searches/{search['id']}/trials").json()
    assert trials[1]["state"] == "pruned" and trials[1]["value"] == 2.0 and "pruned after epoch 2" in trials[1]["error"]
    assert client.get(f"/jobs/{second['job_id']}").json()["cancel_requested"] is True
    with session_scope(sessions) as s:  # its worker stops it, as a cancel request asks
        queue.finish_cancelled(session=s, job_id=second["job_id"], token=token)
    drive_all(sessions=sessions, settings=migrated)
    third = client.get(f"/searches/{search['id']}/trials").json()[2]
    _run_trial(sessions, third["job_id"], [0.45, 0.35, 0.25, 0.2])  # better than the first: not pruned
    drive_all(sessions=sessions, settings=migrated)
    final = client.get(f"/searches/{search['id']}").json()
    assert final["status"] == "succeeded"
    assert [(t["number"], t["state"]) for t in final["leaderboard"]] == [(2, "complete"), (0, "complete"),
                                                                         (1, "pruned")]
    assert final["best"]["number"] == 2 and final["best"]["value"] == 0.2


def test_racing_drivers_never_create_a_trial_twice(client, iris, migrated):
    space = {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}
    search = client.post("/searches", json=search_of(iris, space, sampler="random", budget={"trials": 40},
                                                     parallelism=1)).json()
    # Each round cancels the queued trial, so that every driver's next round may start the next one.
    engines = [make_engine(migrated.database_url) for _ in range(3)]
    makers = [make_sessionmaker(e) for e in engines]

    errors = []

    def rounds(sessions):
        for _ in range(15):
            with session_scope(sessions) as s:
                for job in s.scalars(select(Job).where(Job.search_id == search["id"], Job.status == "queued")):
                    with contextlib.suppress(Conflict):  # another thread cancelled it first
                        queue.request_cancel(session=s, job=job)
            try:
                drive_all(sessions=sessions, settings=migrated)
            except Exception as exc:  # a driver must survive losing every race
                errors.append(exc)

    threads = [threading.Thread(target=rounds, args=(m,)) for m in makers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_scope(makers[0]) as s:
        rows = s.execute(select(SearchTrial.number, SearchTrial.job_id).where(
            SearchTrial.search_id == search["id"])).all()
        job_ids = s.scalars(select(Job.id).where(Job.search_id == search["id"])).all()
    with makers[0]() as s, pytest.raises(IntegrityError):  # the guard itself: one row per (search, number)
        s.add(SearchTrial(search_id=search["id"], number=0, params={}, state="running"))
        s.flush()
    for e in engines:
        e.dispose()
    numbers = [n for n, _ in rows]
    assert len(numbers) > 3 and sorted(numbers) == list(range(len(numbers)))  # none twice, none skipped
    assert sorted(j for _, j in rows) == sorted(job_ids)  # one job per trial


def test_the_wall_time_budget_stops_the_search(client, iris, sessions, migrated):
    space = {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1}}
    search = client.post("/searches", json=search_of(iris, space, sampler="random",
                                                     budget={"trials": 10, "max_wall_s": 1})).json()
    assert search["progress"]["trials_running"] == 2

    def ended():
        drive_all(sessions=sessions, settings=migrated)
        view = client.get(f"/searches/{search['id']}").json()
        return view if view["status"] != "running" else None

    final = wait_for(ended, timeout=30, interval=0.2, what="the wall-time budget to end the search")
    assert final["status"] == "failed" and final["error"].startswith("no trial completed")
    assert final["progress"] == {"trials_done": 2, "trials_running": 0, "trials_budget": 10,
                                 "elapsed_s": final["progress"]["elapsed_s"], "max_wall_s": 1}
    assert final["progress"]["elapsed_s"] >= 1
    assert {j["status"] for j in client.get("/jobs", params={"search_id": search["id"]}).json()["items"]} \
        == {"cancelled"}


def test_a_combination_the_server_refuses_is_a_failed_trial_not_a_failed_search(client, iris, sessions,
                                                                                migrated):
    # each value alone is fine; the ensemble with a step schedule is not
    space = {"model.type": {"type": "choice", "values": ["mlp", "ensemble"]},
             "training.lr_schedule": {"type": "choice", "values": [None, {"type": "step"}]}}
    search = client.post("/searches", json=search_of(iris, space, parallelism=4))
    assert search.status_code == 201, search.text
    trials = client.get(f"/searches/{search.json()['id']}/trials").json()
    assert len(trials) == 4
    refused = [t for t in trials if t["params"] == {"model.type": "ensemble", "training.lr_schedule": {"type": "step"}}]
    assert len(refused) == 1 and refused[0]["state"] == "failed" and refused[0]["job_id"] is None
    assert "constant learning rates" in refused[0]["error"]
    assert sum(t["state"] == "running" for t in trials) == 3
