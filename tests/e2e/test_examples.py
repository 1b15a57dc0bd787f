"""The examples and the walk-throughs of the README and docs/, run as their own processes against `mlps serve`."""

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DATASETS, ROOT, dataset_path, upload, wait_for_job
from tests.test_docs import MODELS_MD, PLAIN, code_blocks, program, section

EXAMPLES = ROOT / "examples"


def run_example(server, name: str, *args: str) -> str:
    env = {**os.environ, "MLPS_URL": str(server.base_url).rstrip("/"), "MLPS_DATA_DIR": str(server.data_dir)}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_train_iris_example(server):
    out = run_example(server, "train_iris.py", str(dataset_path("iris.csv")))
    lines = out.splitlines()
    assert lines[0].startswith("dataset ds_") and "150 rows" in lines[0]
    assert lines[1].startswith("job job_")
    assert any(line.startswith("model mdl_") and "val_accuracy" in line for line in lines)
    assert "-> Iris-setosa" in lines[-3] and "-> Iris-virginica" in lines[-1]


def test_images_example(server):
    probe = io.BytesIO()
    np.savez(probe, X=np.zeros((2, 1, 28, 28), dtype=np.uint8), y=np.array([0, 1]))
    resp = upload(server, "probe.npz", probe.getvalue(), status=None)
    if resp.status_code == 422:
        pytest.skip(f"this server does not accept .npz array data sets yet: {resp.json()['detail']}")
    assert resp.status_code == 201, resp.text
    out = run_example(server, "images.py")
    assert "200 pictures shaped [1, 28, 28]" in out
    right = next(line for line in out.splitlines() if "new pictures right" in line)
    assert int(right.split(": ")[1].split(" of ")[0]) >= 16  # two easy classes: nearly all right


# ---------------------------------------------------------------- the walk-throughs of the README and docs/


def run_walkthrough(server, tmp_path: Path, script: str, *, python: bool = False) -> tuple[str, Path, Path]:
    """Run a walk-through as a reader would, beside the server: its commands on PATH, the data sets where the
    docs say, from an empty folder. Answers its output, that folder and the one mktemp draws from."""
    cwd, temp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)
    url = str(server.base_url).rstrip("/")
    script = script.replace("../shared/datasets/", f"{DATASETS}/").replace("http://127.0.0.1:8000", url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TMPDIR": str(temp), "MLPS_URL": url, "MLPS_DATA_DIR": str(server.data_dir),
           "AUTH": f"Authorization: {server.headers['authorization']}"}
    command = [sys.executable, "-c", script] if python else ["bash", "-c", "set -euo pipefail\n" + script]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exited {done.returncode}:\n{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout, cwd, temp


def written(temp: Path) -> set[str]:
    """The files in the one folder the walk-through made with mktemp."""
    (folder,) = temp.iterdir()
    return {p.name for p in folder.iterdir()}


def test_readme_command_line_walkthrough(server, tmp_path):
    (script,) = code_blocks(section(ROOT / "README.md", "## Command line and Python client"), "sh")
    out, cwd, temp = run_walkthrough(server, tmp_path, script)
    assert list(cwd.iterdir()) == [], "the walk-through wrote into the folder it ran in"
    assert written(temp) == {"iris.png", "scored.csv"}
    assert "val_loss" in out
    with (next(temp.iterdir()) / "scored.csv").open() as file:
        header = next(csv.reader(file))
    assert header[-4:] == ["prediction", "p_Iris-setosa", "p_Iris-versicolor", "p_Iris-virginica"]


def test_cli_md_walkthrough(server, tmp_path):
    cli_md = ROOT / "docs" / "cli.md"
    blocks = [*code_blocks(section(cli_md, "## Walk-through with the command line"), "sh"),
              *code_blocks(section(cli_md, "### Job specs on the command line"), "sh"),
              *code_blocks(section(cli_md, "## Batch scoring: `POST /models/{id}/predict`"), "sh")]
    out, cwd, temp = run_walkthrough(server, tmp_path, "\n".join(blocks))
    assert list(cwd.iterdir()) == [], "the walk-through wrote into the folder it ran in"
    assert written(temp) == {"iris.png", "flowers.json", "scored.csv", "spec.yaml"}
    assert '"predictions"' in out and "Iris-setosa" in out and "disagreement" in out
    assert out.count("succeeded") >= 2  # the walk-through's job and the one from spec.yaml


def test_cli_md_python_client(server, tmp_path):
    (script,) = code_blocks(section(ROOT / "docs" / "cli.md", "## Python client"), "python")
    out, cwd, temp = run_walkthrough(server, tmp_path, script, python=True)
    assert list(cwd.iterdir()) == []
    assert written(temp) == {"scored.csv"}
    lines = out.splitlines()
    assert "succeeded mdl_" in out and "150 rows scored into" in out
    assert json.loads(next(line for line in lines if line.startswith("{")))["predictions"] == ["Iris-setosa"]
    assert lines[-1].startswith("422 Invalid input") and '"field": "target"' in lines[-1]  # the ApiError at the end


def test_models_md_walkthrough(server, tmp_path):
    ds = upload(server, "iris.csv").json()
    resp = server.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "training": {"epochs": 50}})
    assert resp.status_code == 202, resp.text
    job = wait_for_job(server, resp.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "predict_model.py").write_text(program(PLAIN))
    script = "\n".join(code_blocks(MODELS_MD.read_text(), "sh"))
    out, cwd, temp = run_walkthrough(server, tmp_path, f"MODEL={job['model_id']}\n{script}")
    assert [p.name for p in cwd.iterdir()] == ["predict_model.py"]
    assert written(temp) == {"model.zip", "flowers.json"}
    flower = json.loads((next(temp.iterdir()) / "flowers.json").read_text())
    answer = server.post("/predict", json={"model_id": job["model_id"], "records": flower}).json()
    assert json.loads(out.splitlines()[-1]) == {k: answer[k] for k in ("predictions", "probabilities")}


def test_readme_webhook_and_retry_examples(server, tmp_path):
    """The README's `curl` for a webhook endpoint and its `curl` sent twice with one Idempotency-Key answer what
    the README shows: the endpoint's fields with its secret; the second submission replayed, the same job."""
    readme = ROOT / "README.md"
    (hook,) = code_blocks(section(readme, "## Webhooks"), "sh")
    command, shown = hook.split("\n# ")
    out, _, _ = run_walkthrough(server, tmp_path, command)
    endpoint = json.loads(out)
    try:
        assert set(endpoint) == set(json.loads(shown))
        assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["job.succeeded", "job.failed"]
    finally:
        assert server.delete(f"/webhooks/{endpoint['id']}").status_code == 204

    retry_section = section(readme, "### Retrying safely")
    (submit,) = code_blocks(retry_section, "sh")
    head = re.search(r"^```\n(HTTP/1\.1 .*?)^```$", retry_section, flags=re.M | re.S).group(1).strip()
    ds = upload(server, "iris.csv").json()
    script = submit.replace("ds_3f2a9c0d1e4b5a67", ds["id"])
    assert script != submit, "the example's data set id changed: change it here too"
    first, _, _ = run_walkthrough(server, tmp_path, script)
    again, _, _ = run_walkthrough(server, tmp_path, script)

    def parts(answer: str) -> tuple[str, dict[str, str], dict]:
        lines, body = answer.split("\n\n", 1)  # the output is read as text: CRLF arrives as \n
        status, *fields = lines.splitlines()
        return status, {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}, json.loads(body)

    status, headers, job = parts(first)
    status_again, headers_again, job_again = parts(again)
    assert status == status_again == head.splitlines()[0]
    shown_names = {line.split(":", 1)[0] for line in head.splitlines()[1:]}
    assert shown_names <= set(headers_again), "a header the README shows is missing from the replayed answer"
    assert headers_again["idempotent-replayed"] == "true" and "idempotent-replayed" not in headers
    assert headers_again["location"] == headers["location"] == f"/jobs/{job['id']}"
    assert job_again == job and job["status"] == "queued"
    assert wait_for_job(server, job["id"], timeout=300)["status"] == "succeeded"
