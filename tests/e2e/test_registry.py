"""The registry end to end: `mlps models register|alias|versions` and `mlps predict name@alias` against a real
`mlps serve`, and alias moves racing from separate client processes."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.helpers import dataset_path, upload, wait_for_job
from tests.live import admin_key

SPEC = {"target": "species", "model": {"type": "mlp"}, "training": {"epochs": 5}}


@pytest.fixture(scope="module")
def models(server) -> list[str]:
    ds = upload(server, "iris.csv").json()
    jobs = [server.post("/jobs", json={"dataset_id": ds["id"], **SPEC, "training": {"epochs": 5, "seed": seed}})
            .json() for seed in range(3)]
    return [wait_for_job(server, job["id"])["model_id"] for job in jobs]


@pytest.fixture
def mlps(server):
    runner = CliRunner()
    env = {"MLPS_URL": str(server.base_url), "MLPS_API_KEY": admin_key(server.data_dir), "COLUMNS": "200"}

    def invoke(*args: str):
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_register_alias_versions_and_predict_by_alias(mlps, models, tmp_path):
    first, second, _ = models
    out = mlps("models", "register", "iris-cli", first)
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"registered {first} as iris-cli version 1 (iris-cli:1)"
    registered = json.loads(mlps("models", "register", "iris-cli", second, "--json").output)
    assert (registered["version"], registered["model_id"]) == (2, second)

    out = mlps("models", "alias", "iris-cli", "production", "1")
    assert out.exit_code == 0 and out.output.strip() == f"iris-cli@production: new, version 1 (model {first})"
    out = mlps("models", "alias", "iris-cli", "production", "2", "--expect", "1")
    assert out.output.strip() == f"iris-cli@production: version 1 -> version 2 (model {second})"
    refused = mlps("models", "alias", "iris-cli", "production", "1", "--expect", "1")
    assert refused.exit_code == 1 and "points at version 2, not 1 as expected" in refused.output

    versions = mlps("models", "versions", "iris-cli")
    assert versions.exit_code == 0, versions.output
    lines = versions.output.splitlines()
    assert any(line.split()[:3] == ["2", second, "production"] for line in lines), versions.output
    assert any(line.split()[:3] == ["1", first, "-"] for line in lines), versions.output
    assert "2 of 2 versions of iris-cli" in versions.output

    shown = mlps("models", "alias", "iris-cli", "production")
    assert "iris-cli@production: version 1 -> version 2" in shown.output and "2 of 2 moves" in shown.output
    history = json.loads(mlps("models", "alias", "iris-cli", "production", "--json").output)["history"]
    assert [(h["from_version"], h["to_version"]) for h in history] == [(1, 2), (None, 1)]

    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                                    "petal_width": 0.2}]))
    predicted = json.loads(mlps("predict", "iris-cli@production", "--input", str(records)).output)
    assert predicted["model_id"] == second
    scored = mlps("predict", "iris-cli:1", "--input", str(dataset_path("iris.csv")), "--format", "json")
    assert scored.exit_code == 0 and len(json.loads(scored.output)["predictions"]) == 150

    deleted = mlps("models", "delete", second)
    assert deleted.exit_code == 1 and "in use by iris-cli@production (version 2)" in deleted.output
    assert mlps("models", "alias", "iris-cli", "production", "--remove").output.strip() == \
        "removed iris-cli@production"
    assert mlps("models", "delete", second).exit_code == 0


def test_unknown_names_and_aliases_exit_1_naming_what_exists(mlps, models):
    mlps("models", "register", "iris-known", models[0])
    out = mlps("models", "versions", "iris-unknown")
    assert out.exit_code == 1 and "no registered model named 'iris-unknown'" in out.output
    assert "iris-known" in out.output
    out = mlps("models", "alias", "iris-known", "staging")
    assert out.exit_code == 1 and "'iris-known' has no alias 'staging'" in out.output


RACER = """
import sys
from service.client import Client
with Client(sys.argv[1], api_key=sys.argv[2]) as c:
    print(c.move_alias("iris-race", "production", int(sys.argv[3]))["previous_version"])
"""


def test_alias_moves_from_separate_processes_chain_up(server, models):
    first, _, third = models  # the second is deleted by the first test
    assert server.post("/registry/iris-race", json={"model_id": first}).json()["version"] == 1
    assert server.post("/registry/iris-race", json={"model_id": third}).json()["version"] == 2
    key = admin_key(server.data_dir)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(server.base_url), key, str(1 + i % 2)],
                              stdout=subprocess.PIPE, text=True) for i in range(6)]
    answers = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    history = server.get("/registry/iris-race/aliases/production/history").json()["items"]
    assert len(history) == 6 and history[-1]["from_version"] is None
    # each process was told the version its own move left: exactly the history's from_versions
    assert sorted(answers) == sorted(str(h["from_version"]) for h in history)
    for newer, older in zip(history, history[1:], strict=False):
        assert newer["from_version"] == older["to_version"]
