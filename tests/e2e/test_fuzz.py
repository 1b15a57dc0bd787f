"""Schemathesis against the live OpenAPI schema of `mlps serve`: no 5xx, and every response is documented.

A real data set and a trained model exist before the fuzzer starts, and path parameters named after them are drawn
half of the time from their real ids (the other half from whatever the schema allows), so the fuzzer reaches the
handlers behind the 404 check: data set previews, job metrics and events, model reads, /predict, embeddings and file
scoring. Every operation is fuzzed, multipart uploads and the event stream included: the job's stream ends after its
final status, and the request timeout bounds any stream that would not.
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import dataset_path
from tests.e2e.conftest import free_port, running
from tests.helpers import wait_for

SEED = 20251126
EXAMPLES_PER_OPERATION = 12
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")
RUN_TIMEOUT_S = 420


def _toml(value) -> str:
    """A TOML value for strings, numbers, booleans, lists and inline tables (JSON's string escapes are TOML's)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def fuzz_config(*, headers: dict[str, str], ids: dict[str, str], doomed_dataset: str) -> str:
    """schemathesis.toml: fixed seed, bounded examples, real ids bound to the path and body parameters."""
    real = {name: {"dictionary": name, "probability": 0.5} for name in ids}
    lines = [
        f"seed = {SEED}",
        # Bounds every request, the event stream included, so that nothing can hang the run.
        "request-timeout = 10.0",
        # One worker: the run stays reproducible (and hypothesis's lambda descriptions are not thread-safe).
        "workers = 1",
        f"headers = {_toml(headers)}",
        "[generation]",
        f"max-examples = {EXAMPLES_PER_OPERATION}",
        "deterministic = true",
        'database = "none"',
        # The stateful phase chains calls along inferred links and could submit jobs of any size to the worker;
        # the ids it would follow are bound below instead.
        "[phases.stateful]",
        "enabled = false",
        "[checks]",
        *(f"{check}.enabled = true" for check in CHECKS),
        *(f"[dictionaries.{name}]\nvalues = [{json.dumps(value)}]" for name, value in ids.items()),
        "[dictionaries.doomed]",
        f"values = [{json.dumps(doomed_dataset)}]",
        "[parameters]",
        *(f'"path.{name}" = {_toml(binding)}' for name, binding in real.items()),
        # /predict names its model in the body.
        f'"body.model_id" = {_toml(real["model_id"])}',
        # Deleting the shared data set would turn every later request for it into a 404; this one may go.
        "[[operations]]",
        'include-name = "DELETE /datasets/{dataset_id}"',
        f'parameters = {_toml({"path.dataset_id": {"dictionary": "doomed", "probability": 0.5}})}',
    ]
    return "\n".join(lines) + "\n"


def upload(client, name: str) -> str:
    with dataset_path(name).open("rb") as fh:
        resp = client.post("/datasets", files={"file": (name, fh, "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def trained_job(client, dataset_id: str) -> dict:
    spec = {"dataset_id": dataset_id, "target": "species", "model": {"hidden_layers": [4]},
            "training": {"epochs": 3}}
    resp = client.post("/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    job = wait_for(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in {"succeeded", "failed"} and j,
                   timeout=120, what=f"job {job_id} to finish")
    assert job["status"] == "succeeded", job["error"]
    return job


def test_live_schema_holds_under_fuzzing(tmp_path: Path):
    data_dir = tmp_path / "var"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port) as client:
        key_file = data_dir / "admin.key"
        headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"} if key_file.exists() else {}
        client.headers.update(headers)
        dataset_id = upload(client, "iris.csv")
        doomed = upload(client, "xor.csv")
        job = trained_job(client, dataset_id)
        ids = {"dataset_id": dataset_id, "job_id": job["id"], "model_id": job["model_id"]}
        config = tmp_path / "schemathesis.toml"
        config.write_text(fuzz_config(headers=headers, ids=ids, doomed_dataset=doomed))
        command = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "--no-color",
                   "run", f"{url}/openapi.json", "--checks", ",".join(CHECKS)]
        # cwd: reports and caches stay in the temp folder.
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        # The server's side of any 5xx: its traceback.
        server_log = "".join(log.read_text(errors="replace")[-6000:] for log in tmp_path.glob("mlps-*.log"))
        raise AssertionError(f"schemathesis found failures ({' '.join(command)}):\n{proc.stdout}{proc.stderr}\n"
                             f"--- end of the server's log ---\n{server_log}")
