"""The Python client examples, run as their own processes against `mlps serve`."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, dataset_path, upload

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
