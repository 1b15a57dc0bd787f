"""A search started from the CLI runs to its budget over two real worker processes; a worker and the API killed with
SIGKILL mid-search lose no trial and duplicate none; the leaderboard and compare answer from the trials' jobs."""

import json
import os
import subprocess
import sys

import httpx

from tests.helpers import upload, wait_for
from tests.live import Stack, admin_key, free_port

# Short leases: a killed worker's trial is reclaimed within seconds; the API drives searches every 0.3 s.
FAST = {"MLPS_LEASE_S": "2", "MLPS_REAP_EVERY_S": "0.3", "MLPS_CANCEL_GRACE_S": "2"}


def mlps(stack: Stack, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "MLPS_API_KEY": admin_key(stack.data_dir), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--url", url], env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_cli_search_survives_a_killed_worker_and_a_killed_api(tmp_path):
    stack = Stack(tmp_path / "var", env=FAST)
    stack.run("migrate")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        stack.start("api", "api", "--port", str(port))
        stack.wait_ready(url)
        stack.start("w0", "worker", "--devices", "cpu")
        stack.start("w1", "worker", "--devices", "cpu")
        http = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {admin_key(stack.data_dir)}"})
        ds = upload(http, "breast_cancer.csv").json()
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"dataset_id: {ds['id']}\ntarget: diagnosis\nmodel:\n  type: mlp\n"
                        "training:\n  epochs: 60\n  batch_size: 16\n  early_stopping_patience: 0\n")
        space = tmp_path / "space.yaml"
        space.write_text("training.learning_rate: {type: float, low: 0.0005, high: 0.05, log: true}\n"
                         "model.hidden_layers: [[16], [32, 32]]\n")
        started = mlps(stack, url, "search", "start", str(spec), "--space", str(space), "--sampler", "random",
                       "--trials", "8", "--parallelism", "3", "--metric", "val_accuracy", "--name", "e2e",
                       "--tag", "e2e", "--quiet")
        assert started.returncode == 0, started.stderr
        search_id = started.stdout.strip()

        def both_training() -> dict[int, list[str]] | None:
            busy = {w["pid"]: w["running_jobs"] for w in http.get("/workers").json()["items"] if w["running_jobs"]}
            return busy if len(busy) == 2 else None

        busy = wait_for(both_training, timeout=120, interval=0.05, what="both workers to train a trial at once")
        victims = busy[stack.procs["w0"].pid]
        stack.kill("w0")  # SIGKILL: its training process dies with it, its lease runs out
        stack.kill("api")  # SIGKILL the only driver too; a new API process takes over from the rows
        stack.start("api2", "api", "--port", str(port))
        stack.wait_ready(url)

        watched = mlps(stack, url, "search", "watch", search_id, "--json")
        assert watched.returncode == 0, watched.stderr
        final = json.loads(watched.stdout)
        assert final["status"] == "succeeded" and final["name"] == "e2e" and final["tags"] == ["e2e"]
        assert final["progress"]["trials_done"] == 8 and final["progress"]["trials_budget"] == 8

        trials = http.get(f"/searches/{search_id}/trials").json()
        assert [t["number"] for t in trials] == list(range(8))  # none lost, none twice
        assert all(t["state"] == "complete" for t in trials), [(t["state"], t["error"]) for t in trials]
        jobs = {j["id"]: j for j in http.get("/jobs", params={"search_id": search_id, "limit": 100}).json()["items"]}
        assert sorted(jobs) == sorted(t["job_id"] for t in trials)
        for victim in victims:  # the killed worker's trial was reclaimed and finished by the other one
            assert jobs[victim]["status"] == "succeeded" and jobs[victim]["attempts"] == 2
        values = [t["value"] for t in final["leaderboard"]]
        assert values == sorted(values, reverse=True) and len(values) == 8
        best = final["leaderboard"][0]
        assert final["best"]["number"] == best["number"]
        assert best["value"] == jobs[best["job_id"]]["metrics"]["val_accuracy"]
        assert final["model_id"] == jobs[best["job_id"]]["model_id"]

        shown = mlps(stack, url, "search", "show", search_id)
        assert shown.returncode == 0 and f"best model: {final['model_id']}" in shown.stdout, shown.stdout
        a, b = final["leaderboard"][0]["job_id"], final["leaderboard"][-1]["job_id"]
        compared = mlps(stack, url, "jobs", "compare", a, b, "--json")
        assert compared.returncode == 0, compared.stderr
        answer = json.loads(compared.stdout)
        assert [j["id"] for j in answer["jobs"]] == [a, b]
        assert "training.learning_rate" in {d["field"] for d in answer["differences"]}
        listed = mlps(stack, url, "jobs", "list", "--search", search_id, "--json")
        assert json.loads(listed.stdout)["total"] == 8
        http.close()
    finally:
        stack.stop_all()
        if os.environ.get("MLPS_TEST_SHOW_LOG"):
            print(stack.log.read_text()[-5000:])


def test_the_space_from_a_file_and_param_shorthands(tmp_path):
    from service.client.cli.search import load_space

    space_file = tmp_path / "space.yaml"
    space_file.write_text("model.hidden_layers: [[32], [64, 64]]\n"
                          "training.learning_rate: {type: float, low: 0.0001, high: 0.1, log: true}\n")
    space = load_space(space_file, ["training.batch_size=int:16:64", "model.dropout=float:0:0.3",
                                    'model.activation=["relu", "tanh"]'])
    assert space == {
        "model.hidden_layers": {"type": "choice", "values": [[32], [64, 64]]},
        "training.learning_rate": {"type": "float", "low": 0.0001, "high": 0.1, "log": True},
        "training.batch_size": {"type": "int", "low": 16, "high": 64, "log": False},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3, "log": False},
        "model.activation": {"type": "choice", "values": ["relu", "tanh"]}}


def test_a_bad_param_is_a_usage_error_before_any_request(tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset_id: ds_0\ntarget: y\n")
    runner = CliRunner()
    for bad, says in (("training.learning_rate=float:0.1", "float:LOW:HIGH"), ("lr", "FIELD=VALUES"),
                      ("training.epochs=int:a:b", "must be integers"), ("training.seed=7", "a list of choices")):
        result = runner.invoke(app, ["search", "start", str(spec), "--param", bad, "--url", "http://127.0.0.1:9"])
        assert result.exit_code == 2 and says in result.output, (bad, result.output)
    result = runner.invoke(app, ["search", "start", str(spec), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "give the space" in result.output
