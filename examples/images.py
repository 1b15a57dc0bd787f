"""Train an MLP on image-shaped arrays, like the lecture's MNIST batches [N, 1, 28, 28], with the Python client.

Makes a small synthetic data set (two classes of 28×28 grey-scale pictures: a horizontal or a vertical bar,
with noise), saves it as .npz (X: uint8 [N, 1, 28, 28], y: labels), uploads it, trains, and predicts for new
pictures sent as nested arrays ("inputs", shaped [n, 1, 28, 28]).

Usage: python examples/images.py   (server at $MLPS_URL, default http://127.0.0.1:8000)
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from service.client import Client

SIDE = 28
CLASSES = np.array(["horizontal", "vertical"])


def pictures(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n pictures [n, 1, 28, 28] (uint8) of a 4-pixel-wide bar at a random place, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    X = rng.integers(0, 60, size=(n, 1, SIDE, SIDE)).astype(np.uint8)  # background noise
    for i, label in enumerate(labels):
        at = rng.integers(2, SIDE - 6)
        if label == 0:
            X[i, 0, at:at + 4, 2:SIDE - 2] = rng.integers(180, 256)
        else:
            X[i, 0, 2:SIDE - 2, at:at + 4] = rng.integers(180, 256)
    return X, CLASSES[labels]


def main() -> int:
    """Upload, train, predict; exit status 1 when the job does not succeed."""
    X, y = pictures(200, seed=0)
    with tempfile.TemporaryDirectory() as folder, Client() as mlps:
        path = Path(folder) / "bars.npz"
        np.savez(path, X=X, y=y)
        dataset = mlps.upload_dataset(path)
        shape = json.dumps(dataset["columns"][0]["shape"])
        print(f"dataset {dataset['id']}: {dataset['n_rows']} pictures shaped {shape}")
        job = mlps.submit_job({"dataset_id": dataset["id"], "target": "y",
                               "model": {"type": "mlp", "hidden_layers": [64]},
                               "training": {"epochs": 30, "learning_rate": 0.003}})
        job = mlps.wait(job["id"], timeout=600)
        if job["status"] != "succeeded":
            print(f"job {job['status']}: {job['error']}", file=sys.stderr)
            return 1
        print(f"job {job['id']} succeeded: {job['progress']['epoch']} epochs, "
              f"val_accuracy {job['latest_metrics']['val_accuracy']:.3f}")
        X_new, y_new = pictures(20, seed=1)
        answer = mlps.predict(job["model_id"], inputs=X_new.tolist())
        correct = sum(p == t for p, t in zip(answer["predictions"], y_new.tolist(), strict=True))
        print(f"model {job['model_id']}: {correct} of {len(y_new)} new pictures right")
        for truth, label, probs in list(zip(y_new, answer["predictions"], answer["probabilities"], strict=True))[:5]:
            print(f"  a {truth} bar -> {label} ({probs[label]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
