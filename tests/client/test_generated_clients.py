"""Clients generated from the server's /openapi.json work: a Python client (openapi-python-client) uploads, trains,
predicts and reads a 422 as its typed Problem on the live server; TypeScript types (openapi-typescript) compile
under `tsc --strict` in code that reads a Problem, a job and a prediction (clients/typescript/usage.ts)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, TERMINAL, dataset_path, wait_for
from tests.live import IRIS_RECORDS, live_key

PACKAGE = "mlps_generated"
TYPESCRIPT = ROOT / "clients" / "typescript"


def run(command: list[str], cwd: Path) -> str:
    """Run a generator or compiler; fail the test with its output when it fails."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command[0]} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def openapi_json(live_url: str, tmp_path_factory) -> Path:
    """The live server's OpenAPI document, saved to a file."""
    resp = httpx.get(f"{live_url}/openapi.json", timeout=30)
    resp.raise_for_status()
    path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    path.write_bytes(resp.content)
    return path


@pytest.fixture(scope="session")
def generated(openapi_json: Path, tmp_path_factory):
    """The Python client generated from the document, importable as `mlps_generated`; answers what the generator
    printed (its warnings)."""
    folder = tmp_path_factory.mktemp("python-client")
    config = folder / "config.json"
    # No post hooks: the generator would reformat its output with ruff, which importing it does not need.
    config.write_text(json.dumps({"post_hooks": []}))
    output = run([sys.executable, "-m", "openapi_python_client", "generate", "--path", str(openapi_json),
                  "--config", str(config), "--meta", "none", "--output-path", str(folder / PACKAGE)], cwd=folder)
    sys.path.insert(0, str(folder))
    yield output
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def typescript_bin() -> Path:
    """openapi-typescript and tsc at the versions clients/typescript/package-lock.json pins."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the TypeScript types are checked where node and npm are "
                    "(apt-get install nodejs npm)")
    run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=TYPESCRIPT)
    return TYPESCRIPT / "node_modules" / ".bin"


def test_the_generator_keeps_every_documented_response(generated):
    omitted = [line for line in generated.splitlines() if "will be omitted" in line or "Unable to" in line]
    # A model download is a zip archive, which the generator has no type for; everything else is generated.
    assert all("Unsupported content_type application/zip" in line for line in omitted), generated
    assert len(omitted) <= 1 and "duplicate" not in generated, generated


def test_the_generated_python_client_trains_predicts_and_reads_problems(generated, live_url):
    from mlps_generated import AuthenticatedClient, models
    from mlps_generated.api.datasets import upload_dataset
    from mlps_generated.api.jobs import show_job, submit_job
    from mlps_generated.api.models import predict_records, show_model
    from mlps_generated.types import UNSET, File

    with AuthenticatedClient(base_url=live_url, token=live_key(), timeout=httpx.Timeout(60)) as api, \
            dataset_path("iris.csv").open("rb") as iris:
        dataset = upload_dataset.sync(client=api, body=models.UploadDatasetBody(
            file=File(payload=iris, file_name="iris.csv", mime_type="text/csv")))
        assert isinstance(dataset, models.DatasetRead), dataset
        spec = {"dataset_id": dataset.id, "target": "species", "model": {"type": "mlp"}, "training": {"epochs": 5}}
        job = submit_job.sync(client=api, body=models.JobCreate.from_dict(spec))
        assert isinstance(job, models.JobRead), job

        def ended() -> "models.JobRead | None":
            current = show_job.sync(client=api, job_id=job.id)
            assert isinstance(current, models.JobRead), current
            return current if current.status in TERMINAL else None

        job = wait_for(ended, timeout=120, what=f"job {job.id} to end")
        assert job.status == "succeeded", job.error
        answer = predict_records.sync(client=api, body=models.PredictRequest.from_dict(
            {"model_id": job.model_id, "records": IRIS_RECORDS}))
        assert isinstance(answer, models.PredictResponse), answer
        model = show_model.sync(client=api, model_id=job.model_id)
        assert isinstance(model, models.ModelRead), model
        assert len(answer.predictions) == len(IRIS_RECORDS) and set(answer.predictions) <= set(model.labels)

        # A 422 from a generated call comes back parsed: what `--set model.hidden_layers=64,64` sends
        invalid = submit_job.sync(client=api, body=models.JobCreate.from_dict(
            {**spec, "model": {"type": "mlp", "hidden_layers": "64,64"}}))
        assert isinstance(invalid, models.Problem), invalid
        assert invalid.status == 422 and invalid.type_ == "/problems/invalid-input"
        message = "Input should be a valid list; send a JSON list such as [64, 64]"
        assert invalid.detail == f"model.hidden_layers: {message}"
        assert [(e.field, e.message, e.column) for e in invalid.errors] == [("model.hidden_layers", message, UNSET)]
        assert isinstance(invalid.errors[0], models.ProblemError) and invalid.request_id

        # The generated models drop keys they do not know, so an unknown field goes through the client's httpx
        # client; the answer reads as the same typed Problem.
        resp = api.get_httpx_client().post("/jobs", json={**spec, "training": {"epochs": 5, "optimiser": "adam"}})
        assert resp.status_code == 422 and resp.headers["content-type"] == "application/problem+json"
        unknown = models.Problem.from_dict(resp.json())
        assert unknown.detail == "training.optimiser: unknown field; did you mean 'optimizer'?"
        assert [(e.field, e.message) for e in unknown.errors] == [
            ("training.optimiser", "unknown field; did you mean 'optimizer'?")]
        assert unknown.request_id == resp.headers["x-request-id"]


def test_the_generated_typescript_types_compile_in_strict_code(typescript_bin, openapi_json, tmp_path):
    run([str(typescript_bin / "openapi-typescript"), str(openapi_json), "-o", str(tmp_path / "api.d.ts")],
        cwd=tmp_path)
    shutil.copy(TYPESCRIPT / "usage.ts", tmp_path)
    run([str(typescript_bin / "tsc"), "--strict", "--noEmit", "usage.ts"], cwd=tmp_path)
