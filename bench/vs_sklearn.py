"""Our job through the real API vs scikit-learn's MLPClassifier: time and test accuracy.

Each data set is uploaded once to a real `mlps serve`; a job (submit to succeeded, read back from the API) and an
MLPClassifier with the same architecture, activation, optimizer (Adam), epochs (no early stopping on either side;
sklearn runs every `max_iter` epoch), batch size, learning rate and no L2 penalty are then timed in alternation,
`--rounds` times each. sklearn trains on exactly the job's training rows and preprocessing (the project's own
`prepare` with the job's split: no validation split, `test_fraction` 0.2, seed 0) and is scored on the job's test
rows; its time is `fit` alone, the job's is everything from submit to succeeded (data loading, preprocessing,
training, test metrics and storing the model included). XOR has 4 rows and no test split: both are scored on
them, ours by predicting through the API. The regression set (diabetes) is left out.

The second table is the default spec (only `dataset_id`, `target` and a test split of 0.2: the batched ensemble)
on the small sets, against `MLPClassifier(hidden_layer_sizes=(64, 64))` with scikit-learn's own defaults (Adam, up
to 200 epochs with its own stopping rule) fitted on the same training rows, timed in alternation likewise.

Usage: python bench/vs_sklearn.py [--rounds 3] [--rows 100000]
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, Server, markdown_table, median, run_job, upload  # noqa: E402

from service.training.pipeline import SplitSpec, prepare  # noqa: E402

TEST_FRACTION = 0.2


def generated_csv(folder: Path, rows: int, features: int = 50, seed: int = 0) -> Path:
    """A binary classification table whose labels come from a random two-layer teacher network."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    W1 = rng.standard_normal((features, 32)).astype(np.float32) / np.sqrt(features)
    w2 = rng.standard_normal(32).astype(np.float32)
    y = (np.tanh(X @ W1) @ w2 > 0).astype(np.int64)
    path = folder / f"generated_{rows}x{features}.csv"
    table = pa.table({**{f"x{j}": X[:, j] for j in range(features)}, "label": pa.array(np.where(y, "yes", "no"))})
    pacsv.write_csv(table, path)
    return path


CASES = [
    # name, target, hidden, activation, epochs, batch, learning rate, test split
    ("iris", "species", [64, 64], "relu", 200, 32, 1e-3, True),
    ("breast_cancer", "diagnosis", [64, 64], "relu", 200, 32, 1e-3, True),
    ("xor", "y", [4], "tanh", 500, 4, 0.05, False),
]


def compare(http, path: Path, target: str, hidden: list[int], activation: str, epochs: int, batch: int, lr: float,
            test_split: bool, rounds: int) -> list:
    ds = upload(http, path)
    test_fraction = TEST_FRACTION if test_split else 0.0
    spec = {"dataset_id": ds["id"], "target": target,
            "model": {"type": "mlp", "hidden_layers": hidden, "activation": activation, "dropout": 0.0},
            "training": {"epochs": epochs, "batch_size": batch, "optimizer": "adam", "learning_rate": lr,
                         "validation_fraction": 0.0, "test_fraction": test_fraction, "seed": 0,
                         "early_stopping_patience": 0}}
    kinds = {c["name"]: c["kind"] for c in ds["columns"]}
    features = [name for name in kinds if name != target]
    prepared = prepare(pacsv.read_csv(path), targets=[target], features=features, kinds=kinds,
                       task="classification", split=SplitSpec(validation_fraction=0.0, test_fraction=test_fraction,
                                                              seed=0))
    data = prepared.data
    X_eval, y_eval = (prepared.X_test, prepared.y_test) if test_split else (data.X_train, data.y_train)
    ours, theirs, ratios = [], [], []
    ours_acc = theirs_acc = None
    for _ in range(rounds):
        wall, job = run_job(http, spec)
        if test_split:
            ours_acc = job["result"]["test"]["accuracy"]
        else:
            records = pacsv.read_csv(path).to_pylist()
            answer = http.post("/predict", json={"model_id": job["model_id"],
                                                 "records": [{f: r[f] for f in features} for r in records]}).json()
            ours_acc = float(np.mean([str(p) == str(r[target]) for p, r in zip(answer["predictions"], records,
                                                                               strict=True)]))
        clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), activation=activation, solver="adam",
                            learning_rate_init=lr, batch_size=batch, max_iter=epochs, alpha=0.0, shuffle=True,
                            early_stopping=False, tol=0.0, n_iter_no_change=epochs + 1, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(data.X_train, data.y_train)
            fit = time.perf_counter() - t0
        theirs_acc = float(clf.score(X_eval, y_eval))
        ours.append(wall)
        theirs.append(fit)
        ratios.append(fit / wall)
    return [path.stem, f"{len(data.X_train):,}", f"{epochs} × batch {batch}", f"{median(ours):.2f}",
            f"{median(theirs):.2f}", f"{median(ratios):.2f}", f"{ours_acc:.3f}", f"{theirs_acc:.3f}"]


def compare_default(http, path: Path, target: str, rounds: int) -> list:
    """The default spec's job against scikit-learn's MLPClassifier with its defaults, on the same training rows."""
    ds = upload(http, path)
    spec = {"dataset_id": ds["id"], "target": target, "training": {"test_fraction": TEST_FRACTION, "seed": 0}}
    kinds = {c["name"]: c["kind"] for c in ds["columns"]}
    features = [name for name in kinds if name != target]
    prepared = prepare(pacsv.read_csv(path), targets=[target], features=features, kinds=kinds,
                       task="classification", split=SplitSpec(validation_fraction=0.0, test_fraction=TEST_FRACTION,
                                                              seed=0))
    data = prepared.data
    ours, theirs, ratios = [], [], []
    ours_acc = theirs_acc = 0.0
    for _ in range(rounds):
        wall, job = run_job(http, spec)
        ours_acc = job["result"]["test"]["accuracy"]
        clf = MLPClassifier(hidden_layer_sizes=(64, 64), random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(data.X_train, data.y_train)
            fit = time.perf_counter() - t0
        theirs_acc = float(clf.score(prepared.X_test, prepared.y_test))
        ours.append(wall)
        theirs.append(fit)
        ratios.append(fit / wall)
    members = job["result"].get("ensemble", {}).get("members")
    return [path.stem, f"{len(data.X_train):,}", f"ensemble of {members}, {job['result']['epochs_run']} epochs",
            f"{median(ours):.2f} ({min(ours):.2f}–{max(ours):.2f})", f"{median(theirs):.2f}",
            f"{median(ratios):.2f}", f"{ours_acc:.3f}", f"{theirs_acc:.3f}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=10, help="epochs on the generated set")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlps-bench-") as tmp, Server() as server, \
            server.client(timeout=120) as http:
        # the first job pays for the worker's fork server warming up: not part of any comparison
        warm = upload(http, DATASETS / "iris.csv")
        run_job(http, {"dataset_id": warm["id"], "target": "species", "training": {"epochs": 1}}, timeout=300)
        for name, target, hidden, activation, epochs, batch, lr, test_split in CASES:
            rows.append(compare(http, DATASETS / f"{name}.csv", target, hidden, activation, epochs, batch, lr,
                                test_split, args.rounds))
        big = generated_csv(Path(tmp), args.rows)
        rows.append(compare(http, big, "label", [64, 64], "relu", args.epochs, 256, 1e-3, True, args.rounds))
        defaults = [compare_default(http, DATASETS / f"{name}.csv", target, args.rounds)
                    for name, target in (("iris", "species"), ("breast_cancer", "diagnosis"))]
    print(markdown_table(["data set", "training rows", "epochs × batch", "ours: submit → succeeded (s)",
                          "sklearn fit (s)", "sklearn time / ours", "ours accuracy", "sklearn accuracy"], rows))
    print("\nThe default spec against MLPClassifier((64, 64)) with scikit-learn's defaults:\n")
    print(markdown_table(["data set", "training rows", "ours", "ours: submit → succeeded (s, range)",
                          "sklearn fit (s)", "sklearn time / ours", "ours accuracy", "sklearn accuracy"], defaults))


if __name__ == "__main__":
    main()
