"""The model registry over the API: names, numbered versions, aliases moved atomically with their history, references
in /predict and batch scoring, deletion refused while an alias holds a model, owners, and every 404 naming what
exists. The racing tests run on SQLite and (with MLPS_TEST_POSTGRES_URL) on PostgreSQL."""

import csv as csv_module
import io
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import get_type_hints

import httpx
import pytest
from fastapi.testclient import TestClient

from service.server.config import Settings
from service.server.db import make_engine, make_sessionmaker, migrate, session_scope
from service.server.tables import Model
from tests.helpers import bearer, make_key, problem, upload

BOTH_DATABASES = True  # for the tests that take `database` (the races); the rest share one SQLite app below

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
RACERS = 8


class App:
    """One migrated SQLite app with a worker and three trained iris models, shared by the module's tests (each test
    uses its own registry names)."""

    def __init__(self, folder: Path) -> None:
        from service.server.api import create_app
        from service.server.devices import discover
        from service.server.worker import Worker

        self.settings = Settings(data_dir=folder / "var", database_url=f"sqlite:///{folder / 'var' / 'mlps.db'}",
                                 poll_interval_s=0.05, heartbeat_s=0.5, lease_s=30.0)
        migrate(self.settings.database_url)
        self.client = TestClient(create_app(self.settings), headers=bearer(make_key(self.settings, "admin", True)))
        self.client.__enter__()
        self.worker = Worker(self.settings, discover("cpu"))
        self.models = [self.train(seed) for seed in range(3)]

    def train(self, seed: int) -> str:
        ds = upload(self.client, "iris.csv").json()
        job = self.client.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "model": {"type": "mlp"},
                                              "training": {"epochs": 5, "seed": seed}}).json()
        assert self.worker.run_once() == job["id"]
        job = self.client.get(f"/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job["error"]
        return str(job["model_id"])

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    shared = App(tmp_path_factory.mktemp("registry"))
    yield shared
    shared.close()


def test_register_numbers_versions_per_name(app):
    c, (m1, m2, _) = app.client, app.models
    first = c.post("/registry/iris-a", json={"model_id": m1})
    assert first.status_code == 201, first.text
    assert first.headers["location"] == "/registry/iris-a/versions/1"
    body = first.json()
    assert (body["name"], body["version"], body["model_id"], body["aliases"], body["registered_by"]) == \
        ("iris-a", 1, m1, [], "admin")
    assert c.post("/registry/iris-a", json={"model_id": m2}).json()["version"] == 2
    # another name counts from 1 again, and one model may carry several names
    assert c.post("/registry/iris-b", json={"model_id": m2}).json()["version"] == 1
    versions = c.get("/registry/iris-a/versions").json()
    assert [(v["version"], v["model_id"]) for v in versions["items"]] == [(2, m2), (1, m1)]
    assert versions["total"] == 2
    assert c.get("/registry/iris-a/versions/1").json()["model_id"] == m1
    described = c.get("/registry/iris-a").json()
    assert (described["latest_version"], described["versions"], described["aliases"]) == (2, 2, {})
    listed = [r["name"] for r in c.get("/registry").json()["items"]]
    assert {"iris-a", "iris-b"} <= set(listed) and listed == sorted(listed)


def test_the_same_model_twice_under_one_name_is_a_conflict(app):
    c, m1 = app.client, app.models[0]
    c.post("/registry/twice", json={"model_id": m1})
    body = problem(c.post("/registry/twice", json={"model_id": m1}), 409, "already version 1 of 'twice'",
                   field="model_id")
    assert m1 in body["detail"]
    # the refused registration used no number
    assert c.post("/registry/twice", json={"model_id": app.models[1]}).json()["version"] == 2


def test_aliases_move_and_every_move_is_recorded(app):
    c, (m1, m2, _) = app.client, app.models
    for m in (m1, m2):
        c.post("/registry/moves", json={"model_id": m})
    created = c.put("/registry/moves/aliases/production", json={"version": 1})
    assert created.status_code == 200, created.text
    assert {k: created.json()[k] for k in ("alias", "version", "model_id", "previous_version", "moved_by")} == \
        {"alias": "production", "version": 1, "model_id": m1, "previous_version": None, "moved_by": "admin"}
    moved = c.put("/registry/moves/aliases/production", json={"version": 2}).json()
    assert (moved["version"], moved["model_id"], moved["previous_version"]) == (2, m2, 1)
    shown = c.get("/registry/moves/aliases/production").json()
    assert (shown["version"], shown["previous_version"], shown["moved_at"]) == (2, 1, moved["moved_at"])
    assert c.get("/registry/moves").json()["aliases"] == {"production": 2}
    assert c.get("/registry/moves/versions/2").json()["aliases"] == ["production"]
    history = c.get("/registry/moves/aliases/production/history").json()
    assert [(h["from_version"], h["to_version"], h["model_id"], h["moved_by"]) for h in history["items"]] == \
        [(1, 2, m2, "admin"), (None, 1, m1, "admin")]
    assert all(h["key_id"] and h["moved_at"] for h in history["items"])
    # removing an alias is a move too, and its history stays readable
    assert c.delete("/registry/moves/aliases/production").status_code == 204
    problem(c.get("/registry/moves/aliases/production"), 404, "has no alias 'production'", field="alias")
    history = c.get("/registry/moves/aliases/production/history").json()["items"]
    assert (history[0]["from_version"], history[0]["to_version"], history[0]["model_id"]) == (2, None, None)


def test_expected_version_moves_only_from_there(app):
    c, (m1, m2, _) = app.client, app.models
    for m in (m1, m2):
        c.post("/registry/cas", json={"model_id": m})
    assert c.put("/registry/cas/aliases/staging", json={"version": 1, "expected_version": 0}).status_code == 200
    body = problem(c.put("/registry/cas/aliases/staging", json={"version": 2, "expected_version": 0}), 409,
                   "points at version 1", field="expected_version")
    assert "nothing was moved" in body["detail"]
    problem(c.put("/registry/cas/aliases/staging", json={"version": 2, "expected_version": 2}), 409,
            "points at version 1, not 2 as expected")
    assert c.get("/registry/cas/aliases/staging").json()["version"] == 1
    assert c.put("/registry/cas/aliases/staging", json={"version": 2, "expected_version": 1}).json()["version"] == 2
    problem(c.put("/registry/cas/aliases/canary", json={"version": 2, "expected_version": 1}), 409,
            "does not exist yet")


def test_predict_and_batch_scoring_take_references(app):
    c, (m1, m2, _) = app.client, app.models
    for m in (m1, m2):
        c.post("/registry/served", json={"model_id": m})
    c.put("/registry/served/aliases/production", json={"version": 1})
    by_id = {m: c.post("/predict", json={"model_id": m, "records": [IRIS]}).json() for m in (m1, m2)}
    for body, expect in [({"model": "served@production"}, m1), ({"model": "served:2"}, m2),
                         ({"model_id": "served:1"}, m1), ({"model": m2}, m2)]:
        answer = c.post("/predict", json={**body, "records": [IRIS]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == by_id[expect]
    # the alias moves: the next request follows it
    c.put("/registry/served/aliases/production", json={"version": 2})
    assert c.post("/predict", json={"model": "served@production", "records": [IRIS]}).json()["model_id"] == m2
    csv = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n"
    for ref in ("served@production", "served:2", m2):
        scored = c.post(f"/models/{ref}/predict", files={"file": ("x.csv", csv, "text/csv")})
        assert scored.status_code == 200, scored.text
        assert f"predictions-{m2}.csv" in scored.headers["content-disposition"]
        row = next(csv_module.DictReader(io.StringIO(scored.text)))
        assert row["prediction"] == by_id[m2]["predictions"][0]


@pytest.mark.parametrize(("body", "status", "fragment", "field"), [
    ({"model": "nowhere@production"}, 404, "no registered model named 'nowhere'; your registered names: ", "model"),
    ({"model": "refs@prod"}, 404, "'refs' has no alias 'prod'; its aliases: production (version 1)", "model"),
    ({"model": "refs:9"}, 404, "'refs' has no version 9; its versions: 2, 1", "model"),
    ({"model_id": "refs:9"}, 404, "'refs' has no version 9", "model_id"),
    ({"model": "refs:x"}, 422, "send 'name:N' with a version number", "model"),
    ({"model": "refs:0"}, 422, "version number N from 1", "model"),
    ({"model": "refs:\u00b2"}, 422, "version number N from 1", "model"),  # a digit to str.isdigit, not to int()
    ({"model": "re fs@production"}, 422, "is not a registry reference", "model"),
    ({"model": "refs@9live"}, 422, "an alias starting with a letter", "model"),
    ({"model": "refs"}, 404, "'refs' is a registered name: send 'refs@ALIAS' or 'refs:VERSION'", "model"),
    ({}, 422, "neither of 'model_id' and 'model' sent", "model"),
    ({"model_id": "x", "model": "refs:1"}, 422, "both of 'model_id' and 'model' sent", "model"),
    ({"model": "r" * 201}, 422, "at most 200 characters", "model"),
])
def test_bad_references_in_predict(app, body, status, fragment, field):
    c, (m1, m2, _) = app.client, app.models
    if c.get("/registry/refs").status_code == 404:
        for m in (m1, m2):
            c.post("/registry/refs", json={"model_id": m})
        c.put("/registry/refs/aliases/production", json={"version": 1})
    problem(c.post("/predict", json={**body, "records": [IRIS]}), status, fragment, field=field)


def test_bad_references_in_batch_scoring(app):
    csv = {"file": ("x.csv", b"sepal_length\n1\n", "text/csv")}
    problem(app.client.post("/models/ghost@production/predict", files=csv), 404, "no registered model named 'ghost'",
            field="model_id")
    problem(app.client.post("/models/ghost:x/predict", files=csv), 422, "is not a registry reference",
            field="model_id")


@pytest.mark.parametrize(("call", "status", "fragment", "field"), [
    (lambda c, m: c.get("/registry/nope"), 404, "no registered model named 'nope'", "name"),
    (lambda c, m: c.get("/registry/nope/versions"), 404, "no registered model named 'nope'", "name"),
    (lambda c, m: c.post("/registry/bad", json={"model_id": "mdl_0000000000000000"}), 404,
     "no model with id 'mdl_0000000000000000'", "model_id"),
    (lambda c, m: c.post("/registry/bad", json={}), 422, "Field required", "model_id"),
    (lambda c, m: c.post("/registry/bad", json={"model_id": m, "alias": "x"}), 422, "unknown field", "alias"),
    (lambda c, m: c.post("/registry/-bad", json={"model_id": m}), 422, "should match pattern", "name"),
    (lambda c, m: c.post("/registry/b@d", json={"model_id": m}), 422, "should match pattern", "name"),
    (lambda c, m: c.post(f"/registry/{'n' * 129}", json={"model_id": m}), 422, "should match pattern", "name"),
    (lambda c, m: c.get("/registry/errs/versions/7"), 404, "'errs' has no version 7; its versions: 1", "version"),
    (lambda c, m: c.get("/registry/errs/versions/0"), 422, "greater than or equal to 1", "version"),
    (lambda c, m: c.get("/registry/errs/aliases/live"), 404, "'errs' has no alias 'live'; it has no "
                                                             "aliases yet; PUT /registry/errs/aliases/live", "alias"),
    (lambda c, m: c.get("/registry/errs/aliases/live/history"), 404, "'errs' has no alias 'live'", "alias"),
    (lambda c, m: c.delete("/registry/errs/aliases/live"), 404, "'errs' has no alias 'live'", "alias"),
    (lambda c, m: c.put("/registry/errs/aliases/live", json={"version": 3}), 404, "'errs' has no version 3",
     "version"),
    (lambda c, m: c.put("/registry/errs/aliases/live", json={"version": 0}), 422, "greater than or equal to 1",
     "version"),
    (lambda c, m: c.put("/registry/errs/aliases/live", json={}), 422, "Field required", "version"),
    (lambda c, m: c.put("/registry/errs/aliases/9x", json={"version": 1}), 422, "should match pattern", "alias"),
    (lambda c, m: c.put("/registry/errs/aliases/live", json={"version": 1, "expected": 1}), 422,
     "did you mean 'expected_version'?", "expected"),
])
def test_bad_input_names_what_exists(app, call: Callable[[TestClient, str], httpx.Response], status, fragment, field):
    c, m1 = app.client, app.models[0]
    if c.get("/registry/errs").status_code == 404:
        c.post("/registry/errs", json={"model_id": m1})
    problem(call(c, m1), status, fragment, field=field)


def test_a_model_an_alias_points_at_is_not_deleted_until_the_alias_moves(app):
    c = app.client
    doomed, keeper = app.train(7), app.models[0]
    c.post("/registry/keep", json={"model_id": doomed})
    c.post("/registry/keep", json={"model_id": keeper})
    c.put("/registry/keep/aliases/production", json={"version": 1})
    c.put("/registry/keep/aliases/canary", json={"version": 1})
    body = problem(c.delete(f"/models/{doomed}"), 409, "in use by keep@canary (version 1), keep@production "
                                                         "(version 1)", field="model_id")
    assert "PUT /registry/keep/aliases/canary" in body["detail"] and "mlps models alias keep canary N" in body["detail"]
    assert c.get(f"/models/{doomed}").status_code == 200
    c.put("/registry/keep/aliases/production", json={"version": 2})
    problem(c.delete(f"/models/{doomed}"), 409, "in use by keep@canary")
    assert c.delete("/registry/keep/aliases/canary").status_code == 204
    assert c.delete(f"/models/{doomed}").status_code == 204
    # its version went with it; the numbers of the others stay
    assert [v["version"] for v in c.get("/registry/keep/versions").json()["items"]] == [2]
    assert c.get("/registry/keep").json()["latest_version"] == 2
    problem(c.get("/registry/keep/versions/1"), 404, "its versions: 2")
    assert c.post("/registry/keep", json={"model_id": app.models[1]}).json()["version"] == 3


def test_names_are_per_owner_and_other_owners_models_stay_hidden(app):
    c, m1 = app.client, app.models[0]
    c.post("/registry/mine", json={"model_id": m1})
    c.put("/registry/mine/aliases/production", json={"version": 1})
    other = bearer(make_key(app.settings, "someone-else"))
    problem(c.get("/registry/mine", headers=other), 404, "you have no registered names yet", field="name")
    problem(c.post("/predict", json={"model": "mine@production", "records": [IRIS]}, headers=other), 404,
            "no registered model named 'mine'")
    problem(c.post("/registry/mine", json={"model_id": m1}, headers=other), 404, f"no model with id '{m1}'",
            field="model_id")
    assert c.get("/registry", headers=other).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    theirs = c.post("/registry/theirs", json={"model_id": m1}, headers=other)
    assert theirs.status_code == 404
    # an admin sees every model, but registers only its own owner's: its names would pin another owner's model
    engine = make_engine(app.settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        session.add(Model(id="mdl_ownedbyother0001", owner="owner-of-one", model_type="mlp", task="classification",
                          target="species", features=[], labels=["a", "b"], metrics={}, size_bytes=0))
    engine.dispose()
    problem(c.post("/registry/pinned", json={"model_id": "mdl_ownedbyother0001"}), 422, "belongs to owner-of-one",
            field="model_id")


def test_resolve_model_id_is_the_one_resolver(app):
    from service.server.auth import Principal
    from service.server.errors import NotFound
    from service.server.registry import resolve_model_id

    c, (m1, m2, _) = app.client, app.models
    for m in (m1, m2):
        c.post("/registry/resolver", json={"model_id": m})
    c.put("/registry/resolver/aliases/production", json={"version": 2})
    admin = Principal(key_id="k", owner="admin", admin=True)
    engine = make_engine(app.settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            assert resolve_model_id(session, admin, "resolver@production") == m2
            assert resolve_model_id(session, admin, "resolver:1") == m1
            assert resolve_model_id(session, admin, m1) == m1
            with pytest.raises(NotFound, match="no model with id 'mdl_0000000000000000'"):
                resolve_model_id(session, admin, "mdl_0000000000000000")
            with pytest.raises(NotFound, match="no registered model named"):
                resolve_model_id(session, Principal(key_id="k2", owner="else", admin=False), "resolver:1")
    finally:
        engine.dispose()


def test_the_migration_matches_the_tables():
    """What Alembic created for the registry is what the ORM declares (columns, keys, indexes)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.server.db import Base

    ours = ("registry_names", "registry_versions", "registry_aliases", "registry_alias_moves")
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/m.db"
        migrate(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        engine.dispose()

    assert [d for d in diff if any(table in repr(d) for table in ours)] == []


def test_the_client_types_match_the_schema(app):
    """The client's registry methods answer the types the OpenAPI document declares (as tests/client/test_types.py
    checks every other method)."""
    from service.client import Client
    from tests.client.test_types import json_response, mismatches

    document = app.client.app.openapi()
    calls = {("GET", "/registry"): Client.registered_models, ("POST", "/registry/{name}"): Client.register_model,
             ("GET", "/registry/{name}"): Client.registered_model,
             ("GET", "/registry/{name}/versions"): Client.model_versions,
             ("GET", "/registry/{name}/versions/{version}"): Client.model_version,
             ("PUT", "/registry/{name}/aliases/{alias}"): Client.move_alias,
             ("GET", "/registry/{name}/aliases/{alias}"): Client.alias,
             ("GET", "/registry/{name}/aliases/{alias}/history"): Client.alias_history}
    registry_paths = {(m.upper(), p) for p, ops in document["paths"].items() if p.startswith("/registry")
                      for m, op in ops.items() if json_response(op)}
    assert registry_paths == set(calls)
    for (method, path), call in calls.items():
        returns = get_type_hints(call)["return"]
        schema = json_response(document["paths"][path][method.lower()])
        assert mismatches(returns, schema, document, str(returns)) == [], (method, path)


# ---------------------------------------------------------------- races (SQLite and PostgreSQL)


def _models(settings: Settings, n: int) -> list[str]:
    """n model rows (their files are not needed to register them or move aliases)."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            ids = [f"mdl_race{i:012d}" for i in range(n)]
            session.add_all(Model(id=i, owner="admin", model_type="mlp", task="classification", target="species",
                                  features=[], labels=["a", "b"], metrics={}, size_bytes=0) for i in ids)
        return ids
    finally:
        engine.dispose()


def _race(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """n calls at once (released together by a barrier), each on its own thread."""
    barrier = threading.Barrier(n)
    answers: list[httpx.Response | None] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        answers[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def test_racing_registrations_get_distinct_numbers(client, migrated, database):
    models = _models(migrated, RACERS)
    answers = _race(RACERS, lambda i: client.post("/registry/race", json={"model_id": models[i]}))
    assert [a.status_code for a in answers] == [201] * RACERS, [a.text for a in answers]
    numbers = {a.json()["model_id"]: a.json()["version"] for a in answers}
    assert sorted(numbers.values()) == list(range(1, RACERS + 1))
    listed = client.get("/registry/race/versions").json()["items"]
    assert {v["model_id"]: v["version"] for v in listed} == numbers


def test_racing_alias_moves_chain_up_and_conditional_ones_have_one_winner(client, migrated, database):
    models = _models(migrated, RACERS)
    for m in models:
        client.post("/registry/race", json={"model_id": m})
    answers = _race(RACERS, lambda i: client.put("/registry/race/aliases/production", json={"version": i + 1}))
    assert [a.status_code for a in answers] == [200] * RACERS, [a.text for a in answers]
    # Each answer names the version its move really left: together they form one chain, the history's
    moves = {a.json()["previous_version"]: a.json()["version"] for a in answers}
    assert len(moves) == RACERS and None in moves
    chain, at = [], None
    while at in moves:
        at = moves[at]
        chain.append(at)
    assert sorted(chain) == list(range(1, RACERS + 1))
    assert client.get("/registry/race/aliases/production").json()["version"] == chain[-1]
    history = client.get("/registry/race/aliases/production/history").json()["items"]
    assert [h["to_version"] for h in reversed(history)] == chain
    assert [h["from_version"] for h in reversed(history)] == [None, *chain[:-1]]

    # Everyone moves from where they saw it: exactly one wins, the others are told where it went
    seen = chain[-1]
    targets = [v for v in range(1, RACERS + 1) if v != seen][:RACERS - 1]
    answers = _race(len(targets), lambda i: client.put("/registry/race/aliases/production",
                                                       json={"version": targets[i], "expected_version": seen}))
    winners = [a for a in answers if a.status_code == 200]
    assert len(winners) == 1, [a.text for a in answers]
    won = winners[0].json()
    assert won["previous_version"] == seen
    for loser in (a for a in answers if a.status_code != 200):
        problem(loser, 409, f"points at version {won['version']}, not {seen} as expected", field="expected_version")
    assert client.get("/registry/race/aliases/production").json()["version"] == won["version"]
    assert client.get("/registry/race/aliases/production/history").json()["total"] == RACERS + 1
