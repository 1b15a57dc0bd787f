"""The API process runs without torch until it first serves a model; what it checks in its place is exact."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.training import nets, tasks

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: the app, an upload, a job submitted and read back, the job list, a model list.
SCRIPT = textwrap.dedent("""
    import json, sys
    from fastapi.testclient import TestClient
    from service.server.api import create_app
    from service.server.config import Settings
    from service.server.db import migrate
    from tests.helpers import bearer, make_key, upload

    settings = Settings(data_dir=sys.argv[1], database_url="sqlite:///" + sys.argv[1] + "/mlps.db")
    migrate(settings.database_url)
    seen = {}
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "admin", admin=True))) as client:
        seen["started"] = "torch" in sys.modules
        ds = upload(client, "iris.csv").json()
        seen["uploaded"] = "torch" in sys.modules
        job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                         "training": {"epochs": 1}})
        assert job.status_code == 202, job.text
        for path in (f"/jobs/{job.json()['id']}", "/jobs", "/models", f"/datasets/{ds['id']}/preview"):
            assert client.get(path).status_code == 200, path
        seen["submitted"] = "torch" in sys.modules
    print(json.dumps(seen))
""")


def test_the_api_imports_no_torch_to_start_take_an_upload_and_a_job(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"started": False, "uploaded": False,
                                                               "submitted": False}


def test_importing_the_api_package_loads_no_torch():
    out = subprocess.run([sys.executable, "-c", "import service.server.api, sys; print('torch' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


NET = {"hidden_layers": [64, 64], "activation": "relu", "dropout": 0.0, "batch_norm": False}


@pytest.mark.parametrize("model", [
    {**NET, "type": "logistic_regression"},
    {**NET, "type": "perceptron"},
    {**NET, "type": "mlp", "hidden_layers": [16, 8], "activation": "tanh", "dropout": 0.2},
    {**NET, "type": "mlp", "hidden_layers": [32], "batch_norm": True},
    {**NET, "type": "autoencoder", "hidden_layers": [12, 3]},
    {**NET, "type": "autoencoder", "hidden_layers": [6, 2], "batch_norm": True},
    {**NET, "type": "ensemble", "members": 4, "hidden_layers": [8, 8], "linear_skip": True},
    {**NET, "type": "ensemble", "members": 2, "hidden_layers": [5], "linear_skip": False},
])
@pytest.mark.parametrize(("n_in", "n_out"), [(7, 1), (20, 3)])
def test_the_parameter_count_checked_at_submit_is_the_built_networks(model, n_in, n_out):
    import torch

    spec = SimpleNamespace(**model)
    n_out = n_in if spec.type == "autoencoder" else n_out
    with torch.device("meta"):
        built = nets.count_parameters(nets.build_for(spec, n_in, n_out))
    assert tasks.parameter_count(spec, n_in, n_out) == built


def test_an_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="forest"):
        tasks.parameter_count(SimpleNamespace(**NET, type="forest"), 3, 1)
