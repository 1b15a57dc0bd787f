"""Schemathesis against the live OpenAPI schema of `mlps serve`: no 5xx, and every response is documented.

Before the fuzzer starts, the server holds two data sets, a trained classifier and autoencoder, and two jobs that
stay queued (they ask for a GPU). Path parameters and /predict's model_id are drawn half of the time from those
real ids, the other half from whatever the schema allows, so the fuzzer reaches the handlers behind the 404 check:
previews, job metrics and events, model reads, /predict, embeddings, file scoring, cancel and delete.

Nothing is excluded: multipart uploads get generated files, and the event stream is fuzzed too. Its real job ids
are finished jobs, whose stream ends after the final status; the request timeout bounds any stream that would not.
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import upload, wait_for_job
from tests.live import free_port, running

SEED = 20251126
EXAMPLES_PER_OPERATION = 15
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")
RUN_TIMEOUT_S = 900  # a guard against a hang; the run takes about a minute on 2 idle cores
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _toml(value) -> str:
    """A TOML value for strings, numbers, booleans, lists and inline tables (JSON's string escapes are TOML's)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def fuzz_config(*, headers: dict[str, str], ids: dict[str, list[str]], per_operation: dict[str, dict[str, list[str]]]
                ) -> str:
    """schemathesis.toml: fixed seed, bounded examples, real ids drawn half of the time for the named parameters.

    `ids` binds parameters of every operation ("path.job_id": [...]), `per_operation` those of one operation.
    """

    def bindings(params: dict[str, list[str]], prefix: str) -> tuple[list[str], dict[str, dict]]:
        tables = [f"[dictionaries.{prefix}{i}]\nvalues = {_toml(values)}" for i, values in enumerate(params.values())]
        bound = {param: {"dictionary": f"{prefix}{i}", "probability": 0.5} for i, param in enumerate(params)}
        return tables, bound

    tables, bound = bindings(ids, "ids")
    operations = []
    for n, (name, params) in enumerate(per_operation.items()):
        op_tables, op_bound = bindings(params, f"op{n}_")
        tables += op_tables
        operations += ["[[operations]]", f"include-name = {_toml(name)}", f"parameters = {_toml(op_bound)}"]
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
        # Every request carries the key above; the fuzzer does not make up credentials of its own.
        "with-security-parameters = false",
        # The stateful phase chains calls along inferred links, which could submit jobs of any size to the one
        # worker; the ids it would follow are bound below instead.
        "[phases.stateful]",
        "enabled = false",
        # Nor do the other phases reuse ids from earlier responses: the run stays the same from one time to the
        # next, the bound data set is never deleted, and no job spec the fuzzer makes up reaches a real data set
        # (specs may ask for networks far too large for a test machine's memory).
        *(f"[phases.{phase}]\nextra-data-sources.responses = false" for phase in ("examples", "coverage", "fuzzing")),
        "[checks]",
        *(f"{check}.enabled = true" for check in CHECKS),
        *tables,
        "[parameters]",
        *(f"{_toml(param)} = {_toml(binding)}" for param, binding in bound.items()),
        *operations,
    ]
    return "\n".join(lines) + "\n"


def submit(client, spec: dict) -> str:
    resp = client.post("/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def succeeded(client, job_id: str) -> dict:
    job = wait_for_job(client, job_id, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    return job


def test_live_schema_holds_under_fuzzing(tmp_path: Path):
    data_dir = tmp_path / "var"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The per-key rate limit would answer 429 to a fuzzer's burst; it has its own tests.
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port,
                 env={"MLPS_RATE_LIMIT_PER_S": "0"}) as client:
        key_file = data_dir / "admin.key"
        headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"} if key_file.exists() else {}
        client.headers.update(headers)
        iris = upload(client, "iris.csv").json()["id"]
        xor = upload(client, "xor.csv").json()["id"]
        tiny = {"epochs": 3, "validation_fraction": 0.2}
        classifier = submit(client, {"dataset_id": iris, "target": "species", "model": {"hidden_layers": [4]},
                                     "training": tiny})
        autoencoder = submit(client, {"dataset_id": iris, "features": IRIS_FEATURES, "training": tiny,
                                      "model": {"type": "autoencoder", "hidden_layers": [2]}})
        jobs = [succeeded(client, classifier), succeeded(client, autoencoder)]
        # Without a GPU these stay queued: one to cancel, one that keeps iris in use (409 on delete) throughout.
        waiting = [submit(client, {"dataset_id": iris, "target": "species", "device": "cuda:0", "training": tiny})
                   for _ in range(2)]
        ids = {"path.dataset_id": [iris], "path.job_id": [j["id"] for j in jobs],
               "path.model_id": [j["model_id"] for j in jobs], "body.model_id": [j["model_id"] for j in jobs]}
        per_operation = {
            # xor may go (204 once, then 404); iris may not while the waiting job needs it (409).
            "DELETE /datasets/{dataset_id}": {"path.dataset_id": [xor, iris]},
            "POST /jobs/{job_id}/cancel": {"path.job_id": waiting[:1]},
        }
        config = tmp_path / "schemathesis.toml"
        config.write_text(fuzz_config(headers=headers, ids=ids, per_operation=per_operation))
        # The live schema, fetched with the key (should /openapi.json need one), fuzzed against the live server.
        schema = tmp_path / "openapi.json"
        schema.write_bytes(client.get("/openapi.json").raise_for_status().content)
        command = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "--no-color",
                   "run", str(schema), "--url", url, "--checks", ",".join(CHECKS)]
        # cwd: reports and caches stay in the temp folder.
        try:
            proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"schemathesis ran past {RUN_TIMEOUT_S} s ({' '.join(command)}):\n"
                                 f"{(exc.stdout or b'').decode(errors='replace')}") from None
    print(proc.stdout[-2000:])  # the run's summary, for -rP
    if proc.returncode != 0:
        # The server's side of any 5xx: its traceback.
        server_log = "".join(log.read_text(errors="replace")[-6000:] for log in tmp_path.glob("mlps-*.log"))
        raise AssertionError(f"schemathesis found failures ({' '.join(command)}):\n{proc.stdout}{proc.stderr}\n"
                             f"--- end of the server's log ---\n{server_log}")
