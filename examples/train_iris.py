"""Train an iris classifier with the Python client: upload, submit, follow, predict.

Usage: python examples/train_iris.py [CSV]   (server at $MLPS_URL, default http://127.0.0.1:8000)
"""

import json
import sys
from pathlib import Path

from service.client import Client, JobEvent

IRIS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "iris.csv"
FLOWERS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.0, "sepal_width": 2.9, "petal_length": 4.5, "petal_width": 1.5},
    {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
]


def show_epoch(event: JobEvent) -> None:
    """Print every tenth epoch's validation metrics as they arrive."""
    if event.kind == "epoch" and event.data["epoch"] % 10 == 0:
        m = event.data["metrics"]
        print(f"  epoch {event.data['epoch']:>3}: val_loss {m['val_loss']:.4f}, val_accuracy {m['val_accuracy']:.3f}")


def main() -> int:
    """Run the walkthrough; exit status 1 when the job does not succeed."""
    csv = Path(sys.argv[1]) if len(sys.argv) > 1 else IRIS
    with Client() as mlps:
        dataset = mlps.upload_dataset(csv)
        print(f"dataset {dataset['id']}: {dataset['n_rows']} rows, columns "
              f"{json.dumps([c['name'] for c in dataset['columns']])}")
        job = mlps.submit_job({"dataset_id": dataset["id"], "target": "species",
                               "model": {"hidden_layers": [32, 32]},
                               "training": {"epochs": 40, "learning_rate": 0.02, "batch_size": 16}})
        print(f"job {job['id']} {job['status']}")
        job = mlps.wait(job["id"], timeout=600, on_update=show_epoch)
        if job["status"] != "succeeded":
            print(f"job {job['status']}: {job['error']}", file=sys.stderr)
            return 1
        model = mlps.model(job["model_id"])
        print(f"model {model['id']}: val_accuracy {model['metrics']['val_accuracy']:.3f}")
        answer = mlps.predict(model["id"], records=FLOWERS)
        for flower, label, probs in zip(FLOWERS, answer["predictions"], answer["probabilities"], strict=True):
            print(f"  {json.dumps(flower)} -> {label} ({probs[label]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
