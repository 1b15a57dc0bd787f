"""The `mlps` client commands (datasets, jobs, models, predict) through Typer's CliRunner, against a real server."""

import csv
import io
import json
import os
import re
import stat
import subprocess

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from service.cli import app
from service.client import servers
from tests.helpers import dataset_path
from tests.live import IRIS_RECORDS, free_port, live_data_dir, running

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RULE = "─"


@pytest.fixture
def mlps(live_url, tmp_path):
    """Run `mlps ARGS...` in-process with MLPS_URL pointing at the live server and MLPS_DATA_DIR at its data dir
    (where the CLI finds the admin key, as beside `mlps serve`), and a home of its own (no servers recorded there);
    answers the click Result."""
    runner = CliRunner()
    home = tmp_path / "home"

    def invoke(*args: str, env: dict[str, str | None] | None = None):
        return runner.invoke(app, list(args), env={"MLPS_URL": live_url, "MLPS_DATA_DIR": live_data_dir(),
                                                   "MLPS_API_KEY": None, "MLPS_API_KEY_FILE": None,
                                                   "HOME": str(home), "XDG_STATE_HOME": str(home / "state"),
                                                   "COLUMNS": "200", **(env or {})})

    return invoke


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_datasets_upload_list_show_preview_delete(mlps):
    upload = mlps("datasets", "upload", str(dataset_path("iris.csv")), "--name", "flowers")
    assert upload.exit_code == 0, upload.output
    assert "flowers): 150 rows × 5 columns" in upload.stdout and "species" in upload.stdout
    ds_id = upload.stdout.split()[1]
    assert ds_id.startswith("ds_")
    listed = mlps("datasets", "list", "--limit", "500")
    assert listed.exit_code == 0 and ds_id in listed.stdout
    assert ds_id in [d["id"] for d in _json(mlps("datasets", "list", "--json", "--limit", "500"))["items"]]
    show = mlps("datasets", "show", ds_id)
    assert show.exit_code == 0 and "petal_width" in show.stdout and "numeric" in show.stdout
    assert _json(mlps("datasets", "show", ds_id, "--json"))["n_rows"] == 150
    preview = _json(mlps("datasets", "preview", ds_id, "--limit", "2", "--json"))
    assert len(preview["rows"]) == 2 and preview["rows"][0]["species"] == "Iris-setosa"
    assert "Iris-setosa" in mlps("datasets", "preview", ds_id, "--limit", "2").stdout
    deleted = mlps("datasets", "delete", ds_id)
    assert deleted.exit_code == 0 and f"deleted {ds_id}" in deleted.stdout
    gone = mlps("datasets", "show", ds_id)
    assert gone.exit_code == 1 and f"no data set with id '{ds_id}'" in " ".join(gone.stderr.split())


def test_jobs_submit_with_a_yaml_spec_and_overrides_then_wait(mlps, iris_job, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("target: species\nmodel:\n  type: mlp\n  hidden_layers: [16, 8]\ntraining:\n  epochs: 200\n"
                    "  learning_rate: 0.01\n")
    result = mlps("jobs", "submit", "--dataset", iris_job["dataset_id"], "--spec", str(spec),
                  "--set", "training.epochs=6", "--set", "training.optimizer=adamw", "--set", "model.dropout=0.0",
                  "--wait", "--timeout", "120", "--json")
    job = _json(result)
    assert job["status"] == "succeeded" and job["model_id"]
    assert job["spec"]["model"]["hidden_layers"] == [16, 8]
    assert job["spec"]["training"]["epochs"] == 6 and job["spec"]["training"]["optimizer"] == "adamw"
    assert job["spec"]["training"]["learning_rate"] == 0.01 and job["spec"]["model"]["dropout"] == 0.0
    assert "epoch 6/6" in result.stderr or f"epoch {job['progress']['epoch']}/" in result.stderr


def test_jobs_submit_from_a_json_spec_prints_the_job(mlps, iris_job, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset_id": iris_job["dataset_id"], "target": "species",
                                "training": {"epochs": 3}}))
    result = mlps("jobs", "submit", "--spec", str(spec))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("submitted job_") and "3 epochs at most" in result.stdout
    job_id = result.stdout.split()[1]
    waited = mlps("jobs", "wait", job_id, "--timeout", "120")
    assert waited.exit_code == 0, waited.output
    assert f"✓ {job_id} succeeded" in waited.stdout and "model mdl_" in waited.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "training.epochs"], "is not KEY=VALUE"),
    (["--set", "target.name=x", "--target", "species"], "'target' is \"species\", not an object"),
    ([], "say which data set to train on"),
])
def test_jobs_submit_rejects_bad_options_with_exit_status_2(mlps, args, message):
    result = mlps("jobs", "submit", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.replace("│", " ").split())


def test_jobs_submit_shows_the_servers_error_and_exits_1(mlps, iris_job):
    result = mlps("jobs", "submit", "--dataset", iris_job["dataset_id"], "--target", "colour")
    assert result.exit_code == 1
    err = " ".join(result.stderr.split())
    assert "target column 'colour' is not in data set" in err and "(422 Invalid input)" in err


def test_jobs_list_show_and_metrics(mlps, iris_job):
    job_id = iris_job["id"]
    listed = mlps("jobs", "list", "--status", "succeeded", "--limit", "500")
    assert listed.exit_code == 0 and job_id in listed.stdout and "succeeded" in listed.stdout
    assert job_id in [j["id"] for j in _json(mlps("jobs", "list", "--json", "--limit", "500"))["items"]]
    show = mlps("jobs", "show", job_id)
    assert show.exit_code == 0 and iris_job["model_id"] in show.stdout and "classification" in show.stdout
    assert _json(mlps("jobs", "show", job_id, "--json"))["id"] == job_id
    metrics = mlps("jobs", "metrics", job_id)
    assert metrics.exit_code == 0, metrics.output
    assert "val_accuracy" in metrics.stdout and "confusion matrix" in metrics.stdout
    assert "val_f1_macro" not in metrics.stdout
    assert "val_f1_macro" in mlps("jobs", "metrics", job_id, "--all", env={"COLUMNS": "400"}).stdout
    as_json = _json(mlps("jobs", "metrics", job_id, "--json"))
    assert len(as_json["epochs"]) == iris_job["progress"]["epoch"]
    last = mlps("jobs", "metrics", job_id, "--last", "2").stdout
    assert f"{len(as_json['epochs'])} epochs" in last


def test_jobs_plot_writes_a_png_with_curves_and_confusion_matrix(mlps, iris_job, tmp_path):
    out = tmp_path / "curves.png"
    result = mlps("jobs", "plot", iris_job["id"], "--output", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in " ".join(result.stdout.split())
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = imread(out).shape
    assert (height, width) == (800, 1500) and channels in (3, 4)  # two rows of three 5 × 4 inch panels, 100 dpi


def test_jobs_cancel_wait_exits_1_and_plot_refuses_an_empty_job(mlps, iris_job, tmp_path):
    submitted = _json(mlps("jobs", "submit", "--dataset", iris_job["dataset_id"], "--target", "species",
                           "--set", "device=\"cuda:7\"", "--json"))  # no worker has cuda:7: it stays queued
    cancel = mlps("jobs", "cancel", submitted["id"])
    assert cancel.exit_code == 0 and f"cancelled {submitted['id']}" in cancel.stdout
    waited = mlps("jobs", "wait", submitted["id"], "--timeout", "60")
    assert waited.exit_code == 1
    assert f"{submitted['id']} cancelled" in waited.stdout and "cancelled by request" in waited.stdout
    plot = mlps("jobs", "plot", submitted["id"], "-o", str(tmp_path / "none.png"))
    assert plot.exit_code == 1 and "no epoch metrics yet" in plot.stderr
    again = mlps("jobs", "cancel", submitted["id"])
    assert again.exit_code == 1 and "409" in again.stderr


def test_jobs_wait_times_out_with_exit_1(mlps, iris_job):
    job = _json(mlps("jobs", "submit", "--dataset", iris_job["dataset_id"], "--target", "species",
                     "--set", "device=cuda:7", "--json"))
    try:
        result = mlps("jobs", "wait", job["id"], "--timeout", "0.5")
        assert result.exit_code == 1 and "has not finished in time (still queued)" in result.stderr
    finally:
        mlps("jobs", "cancel", job["id"])


def test_models_list_and_show(mlps, iris_job):
    model_id = iris_job["model_id"]
    listed = mlps("models", "list", "--limit", "500")
    assert listed.exit_code == 0 and model_id in listed.stdout
    assert model_id in [m["id"] for m in _json(mlps("models", "list", "--json", "--limit", "500"))["items"]]
    show = mlps("models", "show", model_id)
    assert show.exit_code == 0 and "Iris-versicolor" in show.stdout and "sepal_length" in show.stdout
    assert _json(mlps("models", "show", model_id, "--json"))["job_id"] == iris_job["id"]


def test_predict_json_records_to_json_and_csv(mlps, iris_job, tmp_path):
    records = tmp_path / "flowers.json"
    records.write_text(json.dumps(IRIS_RECORDS))
    answer = _json(mlps("predict", iris_job["model_id"], "--input", str(records)))
    assert len(answer["predictions"]) == 2 and answer["model_id"] == iris_job["model_id"]
    out = tmp_path / "flowers.csv"
    result = mlps("predict", iris_job["model_id"], "--input", str(records), "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["prediction"] for r in rows] == answer["predictions"]
    assert float(rows[0]["sepal_length"]) == 5.1 and "p_Iris-virginica" in rows[0]
    result = mlps("predict", iris_job["model_id"], "--input", str(records), "--format", "csv", "--uncertainty")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))  # the default model is an ensemble
    assert len(rows) == 2 and 0 <= float(rows[0]["disagreement"]) <= 1 and float(rows[0]["std"]) >= 0


def test_predict_a_csv_file_streams_csv_or_json(mlps, iris_job, tmp_path):
    out = tmp_path / "scored.csv"
    result = mlps("predict", iris_job["model_id"], "-i", str(dataset_path("iris.csv")), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote 150 predictions to {out}" in " ".join(result.stderr.split())
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 150 and {"species", "prediction", "p_Iris-setosa"} <= set(rows[0])
    to_stdout = mlps("predict", iris_job["model_id"], "-i", str(dataset_path("iris.csv")))
    assert to_stdout.exit_code == 0 and to_stdout.stdout.startswith('"sepal_length"')
    assert len(to_stdout.stdout.splitlines()) == 151
    answer = _json(mlps("predict", iris_job["model_id"], "-i", str(dataset_path("iris.csv")), "--format", "json"))
    assert answer["predictions"] == [r["prediction"] for r in rows]
    assert sum(answer["probabilities"][0].values()) == pytest.approx(1.0, abs=1e-6)


def test_predict_errors_exit_1_with_the_servers_message(mlps, iris_job, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sepal_length,sepal_width\n1,2\n")
    result = mlps("predict", iris_job["model_id"], "-i", str(bad))
    assert result.exit_code == 1
    assert "lacks the model's feature column(s) 'petal_length', 'petal_width'" in " ".join(result.stderr.split())
    unknown = mlps("predict", "mdl_0000000000000000", "-i", str(bad))
    assert unknown.exit_code == 1 and "no model with id 'mdl_0000000000000000'" in unknown.stderr


def test_url_option_beats_the_environment_and_unreachable_is_exit_1(mlps, live_url):
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = mlps("jobs", "list", "--json", "--url", live_url, env={"MLPS_URL": nowhere})
    assert result.exit_code == 0
    down = mlps("jobs", "list", env={"MLPS_URL": nowhere})
    assert down.exit_code == 1 and f"cannot reach the MLP Service at {nowhere}" in " ".join(down.stderr.split())


def test_jobs_wait_exits_1_when_the_job_fails(mlps, live_url):
    ds_id = mlps("datasets", "upload", str(dataset_path("diabetes.csv")), "-q").stdout.strip()
    result = mlps("jobs", "submit", "--dataset", ds_id, "--target", "progression", "--set", "task=regression",
                  "--set", "model.hidden_layers=[256, 256]", "--set", "training.optimizer=sgd",
                  "--set", "training.learning_rate=10", "--set", "training.epochs=50",
                  "--set", "model.type=mlp", "--wait", "--timeout", "120")
    assert result.exit_code == 1, result.output
    out = " ".join(result.stdout.split())
    assert "failed" in out and "loss became NaN" in out


def test_version_prints_the_package_version():
    from service import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"mlps {__version__}"


def test_serve_on_a_busy_port_says_so_before_creating_anything(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "--data-dir", str(tmp_path / "var")],
                                    env={"MLPS_HOST": "127.0.0.1", "MLPS_ADMIN_KEY": None,
                                         "HOME": str(tmp_path / "home"), "XDG_STATE_HOME": None})
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output and "--port or MLPS_PORT" in result.output
    assert not (tmp_path / "var").exists()  # no database, no admin key
    assert not (tmp_path / "home").exists()  # and no record of a server that never ran


def test_a_missing_key_says_how_to_give_one(mlps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./var/admin.key here, and no server recorded in the fixture's home
    result = mlps("datasets", "list", env={"MLPS_DATA_DIR": None})
    assert result.exit_code == 1
    hint = " ".join(result.output.split())
    assert "401" in hint and "MLPS_API_KEY=" in hint and "MLPS_API_KEY_FILE=" in hint and "admin.key" in hint
    assert str(tmp_path / "home" / "state" / "mlps" / "servers.json") in hint


# ---------------------------------------------------------------- the key of a local server, from any folder


def test_serve_records_its_data_dir_so_commands_from_any_folder_find_its_key(tmp_path, monkeypatch):
    home, data_dir, port = tmp_path / "home", tmp_path / "var", free_port()
    record = home / ".local" / "state" / "mlps" / "servers.json"  # XDG_STATE_HOME unset: the default place
    url = f"http://127.0.0.1:{port}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {"MLPS_DATA_DIR": None, "MLPS_API_KEY": None, "MLPS_API_KEY_FILE": None, "HOME": str(home),
           "XDG_STATE_HOME": None}
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port,
                 env={"HOME": str(home), "XDG_STATE_HOME": ""}):
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        entry = json.loads(record.read_text())["servers"][url]
        assert entry["data_dir"] == str(data_dir.resolve())
        for base in (url, f"http://localhost:{port}/"):
            result = CliRunner().invoke(app, ["datasets", "list", "--json"], env={**env, "MLPS_URL": base})
            assert result.exit_code == 0, result.output
            assert result.stdout.lstrip().startswith("{")
        # MLPS_API_KEY_FILE still comes first
        bad_key = tmp_path / "other.key"
        bad_key.write_text("mlps_not-a-key-of-this-server\n")
        refused = CliRunner().invoke(app, ["datasets", "list"], env={**env, "MLPS_URL": url,
                                                                     "MLPS_API_KEY_FILE": str(bad_key)})
        assert refused.exit_code == 1 and "401" in refused.output
    assert url not in json.loads(record.read_text())["servers"]  # a stopped server takes its entry away


def test_a_recorded_server_counts_only_while_its_process_runs_and_only_on_loopback(tmp_path, monkeypatch):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "admin.key").write_text("mlps_recorded\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    record = tmp_path / "state" / "mlps" / "servers.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": 1, "servers": {
        "http://127.0.0.1:8123": {"data_dir": str(data_dir), "pid": os.getpid()},
        "http://127.0.0.1:8124": {"data_dir": str(data_dir), "pid": gone.pid}}}))
    record.chmod(0o600)
    for name in ("MLPS_API_KEY", "MLPS_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert servers.registry_path() == record
    assert servers.recorded_key("http://127.0.0.1:8123") == "mlps_recorded"
    assert servers.recorded_key("http://localhost:8123/") == "mlps_recorded"
    assert servers.recorded_key("http://127.0.0.1:8124") is None  # its server was killed without cleaning up
    assert servers.recorded_key("http://example.org:8123") is None
    monkeypatch.setenv("MLPS_API_KEY_FILE", str(tmp_path / "given.key"))
    assert servers.recorded_key("http://127.0.0.1:8123") is None  # the environment comes first
    monkeypatch.delenv("MLPS_API_KEY_FILE")
    record.chmod(0o666)
    assert servers.recorded_key("http://127.0.0.1:8123") is None  # a record others may write is not trusted
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert servers.registry_path() == tmp_path / "home" / ".local" / "state" / "mlps" / "servers.json"


# ---------------------------------------------------------------- an 80-column terminal


def _table(stdout: str) -> tuple[list[str], list[str]]:
    """The header words and the body lines of the first table (SIMPLE_HEAD: header line, rule, rows)."""
    lines = stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith(RULE))
    header = [line for line in lines[:rule] if line.strip()]
    assert len(header) == 1, f"the header takes more than one line:\n{stdout}"
    body = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        body.append(line)
    return header[0].split(), body


@pytest.mark.parametrize(("command", "headers", "other_id"), [
    ("jobs", {"id", "status", "task", "epoch", "metric", "model", "created"}, ("model", "model_id")),
    ("models", {"id", "type", "task", "target", "metric", "job", "created"}, ("job", "job_id")),
    ("datasets", {"id", "name", "format", "rows", "columns", "size", "created"}, None),
])
def test_lists_at_80_columns_print_every_id_whole_on_one_line(mlps, iris_job, command, headers, other_id):
    page = _json(mlps(command, "list", "--json", "--limit", "20"))
    result = mlps(command, "list", "--limit", "20", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    shown, body = _table(result.stdout)
    assert shown[0] == "id" and set(shown) <= headers and "…" not in "".join(body)
    rows = [line.split() for line in body if re.match(r"\s*(job|mdl|ds)_", line)]
    assert [row[0] for row in rows] == [item["id"] for item in page["items"]]
    if other_id and other_id[0] in shown:
        assert all(item[other_id[1]] in row for item, row in zip(page["items"], rows, strict=True)
                   if item[other_id[1]])
    if headers - set(shown):
        assert "not shown at this width (use --json)" in result.stdout
    if command == "jobs":  # the epoch counter is worth more than the task or the date
        assert {"status", "epoch"} <= set(shown)


def test_metrics_at_80_columns_keep_headers_whole(mlps, iris_job):
    names = {k for row in _json(mlps("jobs", "metrics", iris_job["id"], "--json"))["epochs"] for k in row["metrics"]}
    for extra in ([], ["--all"]):
        result = mlps("jobs", "metrics", iris_job["id"], *extra, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.stdout.splitlines()) <= 80
        shown, body = _table(result.stdout)
        assert shown[0] == "epoch" and set(shown[1:]) <= names and len(shown) >= 4
        assert all(len(line.split()) == len(shown) for line in body)
        assert "confusion matrix" in result.stdout
    assert "not shown at this width (use --json)" in result.stdout  # --all: more metrics than fit


def test_preview_of_a_wide_file_at_80_columns_shows_whole_columns_and_counts_the_rest(mlps, tmp_path):
    wide = tmp_path / "wide.csv"
    names = [f"feature_{i:02d}" for i in range(40)] + ["label"]
    wide.write_text(",".join(names) + "\n" + "".join(
        ",".join([*(f"{r}.{c:02d}" for c in range(40)), "yes" if r % 2 else "no"]) + "\n" for r in range(1, 6)))
    ds_id = _json(mlps("datasets", "upload", str(wide), "--json"))["id"]
    try:
        result = mlps("datasets", "preview", ds_id, "--limit", "3", env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        header = next(line for line in lines if "feature_00" in line)
        shown = [cell.strip() for cell in header.strip("┃").split("┃")]
        assert shown == names[:len(shown)] and len(shown) >= 4
        first_row = next(line for line in lines if line.startswith("│"))
        assert [cell.strip() for cell in first_row.strip("│").split("│")] == [
            f"1.{c:02d}00" for c in range(len(shown))]
        assert f"… {len(names) - len(shown)} more columns: use --json" in result.stdout
    finally:
        mlps("datasets", "delete", ds_id)


def test_waiting_at_80_columns_keeps_the_epoch_counter_and_the_time_left(mlps, iris_job):
    result = mlps("jobs", "submit", "--dataset", iris_job["dataset_id"], "--target", "species",
                  "--set", "model.type=mlp", "--set", "training.epochs=3", "--wait", "--timeout", "120",
                  env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if "epoch" in line]
    assert progress, result.stderr
    line = progress[-1]
    assert len(line) <= 80 and "…" not in line
    assert re.search(r"epoch (\d+)/\1\b", line) and re.search(r"\d+:\d\d:\d\d$", line.rstrip()), line
    assert "succeeded" in line and "val_accuracy" in line


def test_the_python_client_finds_a_recorded_local_servers_key_too(tmp_path, monkeypatch):
    from service.client.http import find_api_key

    data_dir = tmp_path / "elsewhere" / "var"
    data_dir.mkdir(parents=True)
    (data_dir / "admin.key").write_text("mlps_from_the_record\n")
    record = tmp_path / "state" / "mlps" / "servers.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": 1, "servers": {
        "http://127.0.0.1:8125": {"data_dir": str(data_dir), "pid": os.getpid()}}}))
    record.chmod(0o600)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("MLPS_API_KEY", "MLPS_API_KEY_FILE", "MLPS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./var here
    assert find_api_key("http://localhost:8125") == "mlps_from_the_record"
    assert find_api_key("http://127.0.0.1:8126") is None
    monkeypatch.setenv("MLPS_API_KEY", "mlps_from_the_environment")
    assert find_api_key("http://localhost:8125") == "mlps_from_the_environment"
