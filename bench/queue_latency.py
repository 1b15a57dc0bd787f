"""Queue pickup latency and service overhead, through a real API and worker.

- pickup: a job submitted to an idle worker, from `created_at` to `started_at` (both database timestamps),
  p50 / p99 over N jobs submitted one at a time;
- overhead: submit-to-succeeded wall time of a tiny job (iris, 50 epochs) minus its own training time, and the part
  of it spent loading and preprocessing the data in the job's process (`data_seconds`).

The server runs with its default settings (poll interval 0.2 s): on SQLite the worker wakes when the database file
changes, on PostgreSQL when NOTIFY says a job was queued, so pickup does not wait for a poll.

Usage: python bench/queue_latency.py [--jobs 100] [--database-url URL] [--markdown]
"""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, Server, machine, median, percentile, run_job, upload  # noqa: E402

IRIS = DATASETS / "iris.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table row block")
    args = ap.parse_args()
    env = {}
    if args.database_url:
        env["MLPS_DATABASE_URL"] = args.database_url
    with Server(env=env) as server, server.client(timeout=30) as http:
        ds = upload(http, IRIS)
        # the worker is idle once it has finished a first job
        run_job(http, {"dataset_id": ds["id"], "target": "species", "training": {"epochs": 1}}, timeout=180)
        pickups = []
        for i in range(args.jobs):
            _, done = run_job(http, {"dataset_id": ds["id"], "target": "species",
                                     "training": {"epochs": 1, "seed": i}})
            pickups.append((_ts(done["started_at"]) - _ts(done["created_at"])) * 1000)
        overheads = []
        for i in range(5):
            wall, done = run_job(http, {"dataset_id": ds["id"], "target": "species",
                                        "training": {"epochs": 50, "early_stopping_patience": 0, "seed": i}})
            overheads.append((wall, done["result"]["train_seconds"], done["result"]["data_seconds"]))
    db = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    result = {
        "database": db, "jobs": args.jobs,
        "pickup_ms_p50": round(median(pickups), 1), "pickup_ms_p99": round(percentile(pickups, 0.99), 1),
        "submit_to_done_s_median": round(median([w for w, _, _ in overheads]), 3),
        "train_s_median": round(median([t for _, t, _ in overheads]), 3),
        "overhead_s_median": round(median([w - t for w, t, _ in overheads]), 3),
        "data_s_median": round(median([d for _, _, d in overheads]), 3),
        "machine": machine(),
    }
    if args.markdown:
        print(f"| {db} | {result['pickup_ms_p50']} | {result['pickup_ms_p99']} | {result['submit_to_done_s_median']} "
              f"| {result['train_s_median']} | {result['overhead_s_median']} |")
    else:
        print(json.dumps(result, indent=2))


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


if __name__ == "__main__":
    main()
