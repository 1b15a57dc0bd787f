"""A random hyperparameter search through the real API, with one and with two workers, against the same trials
run as sequential jobs and against scikit-learn's RandomizedSearchCV over MLPClassifier.

Data: breast_cancer.csv (569 rows, 30 numeric columns, binary target) from ../shared/datasets. The base spec is
one MLP (`model.type` mlp, `--epochs` epochs at most, early stopping on val_loss with patience 10, a validation
split of 0.2 and a test split of 0.2, seed 0); the space is the learning rate (log-uniform 1e-4 to 3e-2), the
hidden layers ([32], [64], [64, 64] or [128, 128]), dropout (0 to 0.3) and the batch size (16, 32 or 64); the
sampler is random with seed 0, `--trials` trials, metric val_accuracy, parallelism 4.

1. search, 1 worker: `mlps serve` (API + one worker process); wall time from POST /searches to the search's end.
2. search, 2 workers: the same plus a second `mlps worker` process on the same database and data dir.
3. sequential jobs: the trials' own parameters (from run 1), each `POST /jobs` then waiting for it before the next
   (the hand-written loop), on the one-worker server.
4. RandomizedSearchCV(MLPClassifier) with the equivalent space (batch size, hidden layers, learning rate; sklearn
   has no dropout), the same number of candidates, one 80/20 validation split (ShuffleSplit), `max_iter` the same
   epochs with its own early stopping (`early_stopping=True`, patience 10), standardised inputs, refit on the
   training rows; n_jobs 1 and 2. Its time is `fit` alone.

Quality: the test accuracy (the 20 % test split) of the best trial (chosen by val_accuracy), of the default spec's
job (only `dataset_id`, `target` and the same test split: the batched ensemble), and of sklearn's refitted best
candidate on its own 20 % test split (train_test_split, seed 0, stratified). Every wall time is one run: these
machines are shared, so compare figures from the same run only.

Usage: python bench/search.py [--trials 32] [--epochs 100] [--markdown]
"""

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
from scipy.stats import loguniform
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import RandomizedSearchCV, ShuffleSplit, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, Server, markdown_table, run_job, upload, wait  # noqa: E402

DATA = DATASETS / "breast_cancer.csv"
TARGET = "diagnosis"
SPACE = {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
         "model.hidden_layers": {"type": "choice", "values": [[32], [64], [64, 64], [128, 128]]},
         "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
         "training.batch_size": {"type": "choice", "values": [16, 32, 64]}}


def base_spec(dataset_id: str, epochs: int) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "target": TARGET, "model": {"type": "mlp"},
            "training": {"epochs": epochs, "validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0,
                         "early_stopping_patience": 10}}


def run_search(server: Server, epochs: int, trials: int) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """(wall seconds from POST to the end, the final search, its trials)."""
    with server.client() as http:
        ds = upload(http, DATA)
        t0 = time.perf_counter()
        r = http.post("/searches", json={"spec": base_spec(ds["id"], epochs), "space": SPACE, "sampler": "random",
                                         "budget": {"trials": trials}, "metric": "val_accuracy", "parallelism": 4,
                                         "seed": 0})
        r.raise_for_status()
        search_id = r.json()["id"]

        def ended() -> dict[str, Any] | None:
            view = http.get(f"/searches/{search_id}").json()
            return view if view["status"] != "running" and view["progress"]["trials_running"] == 0 else None

        final = wait(ended, timeout=7200, interval=0.05)
        wall = time.perf_counter() - t0
        if final["status"] != "succeeded":
            raise RuntimeError(f"search {search_id} ended {final['status']}: {final['error']}")
        best_job = http.get(f"/jobs/{final['best']['job_id']}").json()
        final["best_test_accuracy"] = best_job["result"]["test"]["accuracy"]
        return wall, final, http.get(f"/searches/{search_id}/trials").json()


def sequential(server: Server, epochs: int, trials: list[dict[str, Any]]) -> float:
    """The same trials as one job after another, each waited for."""
    with server.client() as http:
        ds = upload(http, DATA)
        t0 = time.perf_counter()
        for trial in trials:
            spec = base_spec(ds["id"], epochs)
            for path, value in trial["params"].items():
                section, field = path.split(".")
                spec.setdefault(section, {})[field] = value
            run_job(http, spec, timeout=1800, interval=0.02)
        return time.perf_counter() - t0


def default_job(server: Server) -> float:
    with server.client() as http:
        ds = upload(http, DATA)
        _, job = run_job(http, {"dataset_id": ds["id"], "target": TARGET,
                                "training": {"test_fraction": 0.2, "seed": 0}}, timeout=1800)
        return float(job["result"]["test"]["accuracy"])


def sklearn_search(epochs: int, trials: int, n_jobs: int) -> tuple[float, float, float]:
    """(fit seconds, best validation accuracy, test accuracy of the refitted best)."""
    table = pacsv.read_csv(DATA).to_pandas()
    X = table.drop(columns=[TARGET]).to_numpy(dtype=np.float64)
    y = table[TARGET].to_numpy()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    search = RandomizedSearchCV(
        make_pipeline(StandardScaler(), MLPClassifier(max_iter=epochs, early_stopping=True, n_iter_no_change=10,
                                                      random_state=0)),
        {"mlpclassifier__learning_rate_init": loguniform(1e-4, 3e-2),
         "mlpclassifier__hidden_layer_sizes": [(32,), (64,), (64, 64), (128, 128)],
         "mlpclassifier__batch_size": [16, 32, 64]},
        n_iter=trials, cv=ShuffleSplit(n_splits=1, test_size=0.2, random_state=0), n_jobs=n_jobs, random_state=0,
        scoring="accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        search.fit(X_train, y_train)
        fit = time.perf_counter() - t0
    return fit, float(search.best_score_), float(search.score(X_test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--markdown", action="store_true", help="Print only the Markdown tables")
    args = parser.parse_args()

    with Server() as one:
        wall_1, search_1, trials_1 = run_search(one, args.epochs, args.trials)
        wall_seq = sequential(one, args.epochs, trials_1)
        default_accuracy = default_job(one)
    with Server() as two:
        second = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--devices", "cpu"], env=two.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with two.client() as http:
                wait(lambda: len(http.get("/workers").json()["items"]) == 2, timeout=180, interval=0.1)
            wall_2, search_2, _ = run_search(two, args.epochs, args.trials)
        finally:
            second.terminate()
            second.wait(timeout=60)
    sk_1, sk_val, sk_test = sklearn_search(args.epochs, args.trials, n_jobs=1)
    sk_2, _, _ = sklearn_search(args.epochs, args.trials, n_jobs=2)

    n = args.trials
    timing = markdown_table(
        ["run", f"wall time for {n} trials (s)", "per trial (s)", "vs sequential jobs"],
        [["search, 1 worker (`mlps serve`)", f"{wall_1:.1f}", f"{wall_1 / n:.2f}", f"{wall_seq / wall_1:.2f}×"],
         ["search, 2 workers", f"{wall_2:.1f}", f"{wall_2 / n:.2f}", f"{wall_seq / wall_2:.2f}×"],
         [f"{n} sequential jobs (POST, wait, repeat)", f"{wall_seq:.1f}", f"{wall_seq / n:.2f}", "1.00×"],
         ["RandomizedSearchCV(MLPClassifier), n_jobs=1", f"{sk_1:.1f}", f"{sk_1 / n:.2f}", f"{wall_seq / sk_1:.2f}×"],
         ["RandomizedSearchCV(MLPClassifier), n_jobs=2", f"{sk_2:.1f}", f"{sk_2 / n:.2f}",
          f"{wall_seq / sk_2:.2f}×"]])
    quality = markdown_table(
        ["model", "val accuracy", "test accuracy"],
        [["best trial, search with 1 worker", f"{search_1['best']['value']:.4f}",
          f"{search_1['best_test_accuracy']:.4f}"],
         ["best trial, search with 2 workers", f"{search_2['best']['value']:.4f}",
          f"{search_2['best_test_accuracy']:.4f}"],
         ["default spec (the ensemble), one job", "-", f"{default_accuracy:.4f}"],
         ["RandomizedSearchCV best, refitted", f"{sk_val:.4f}", f"{sk_test:.4f}"]])
    if not args.markdown:
        print(f"{n} trials, {args.epochs} epochs at most, breast_cancer.csv\n")
    print(timing)
    print()
    print(quality)


if __name__ == "__main__":
    main()
