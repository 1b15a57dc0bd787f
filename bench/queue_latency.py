"""Queue pickup latency and service overhead, through a real API and worker.

- pickup: a job submitted to an idle worker, from `created_at` to `started_at` (both database timestamps),
  p50 / p99 over N jobs submitted one at a time;
- overhead: submit-to-succeeded wall time of a tiny job (iris, 50 epochs) minus its own training time.

Usage: python bench/queue_latency.py [--jobs 100] [--database-url URL] [--markdown]
"""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IRIS = ROOT.parent / "shared" / "datasets" / "iris.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout=120.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table row block")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlps-bench-"))
    env = {**os.environ, "MLPS_DATA_DIR": str(tmp / "var"), "MLPS_POLL_INTERVAL_S": "0.02"}
    if args.database_url:
        env["MLPS_DATABASE_URL"] = args.database_url
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--devices", "cpu"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait(lambda: _ready(http), timeout=180, interval=0.2)
        ds = http.post("/datasets", files={"file": ("iris.csv", IRIS.read_bytes())}).json()
        # the worker is idle once it has finished a first job
        first = http.post("/jobs", json={"dataset_id": ds["id"], "target": "species", "training": {"epochs": 1}})
        wait(lambda: http.get(f"/jobs/{first.json()['id']}").json()["status"] == "succeeded", timeout=180)
        pickups = []
        for i in range(args.jobs):
            job = http.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                           "training": {"epochs": 1, "seed": i}}).json()
            done = wait(lambda j=job: (r := http.get(f"/jobs/{j['id']}").json())["status"] == "succeeded" and r)
            pickups.append((_ts(done["started_at"]) - _ts(done["created_at"])) * 1000)
        overheads = []
        for i in range(5):
            t0 = time.perf_counter()
            job = http.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                           "training": {"epochs": 50, "early_stopping_patience": 0, "seed": i}}).json()
            done = wait(lambda j=job: (r := http.get(f"/jobs/{j['id']}").json())["status"] == "succeeded" and r)
            wall = time.perf_counter() - t0
            overheads.append((wall, done["result"]["train_seconds"]))
    finally:
        http.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    db = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    result = {
        "database": db, "jobs": args.jobs,
        "pickup_ms_p50": round(statistics.median(pickups), 1), "pickup_ms_p99": round(percentile(pickups, 0.99), 1),
        "submit_to_done_s_median": round(statistics.median(w for w, _ in overheads), 3),
        "train_s_median": round(statistics.median(t for _, t in overheads), 3),
        "overhead_s_median": round(statistics.median(w - t for w, t in overheads), 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
    }
    if args.markdown:
        print(f"| {db} | {result['pickup_ms_p50']} | {result['pickup_ms_p99']} | {result['submit_to_done_s_median']} "
              f"| {result['train_s_median']} | {result['overhead_s_median']} |")
    else:
        print(json.dumps(result, indent=2))


def _ready(http) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


if __name__ == "__main__":
    main()
