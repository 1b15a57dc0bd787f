"""Predict latency and throughput against a minimal FastAPI app serving the same model; batch CSV scoring.

An iris model (hidden 64-64) is trained through a real `mlps serve`; `bench/minimal_app.py` then serves the same
model folder (loaded by the project's artifact loader) in a second uvicorn process. Both answer single-record
`POST /predict` over keep-alive HTTP on loopback:
- latency: blocks of requests alternate between the two servers, one request at a time, in `--latency-rounds`
  rounds; p50 / p99 per round and server, each figure the median over rounds (with the range of the per-round
  ratios);
- throughput: 16 client threads, each with its own keep-alive connection, for a fixed time, alternating too.
Batch scoring uploads a generated 1 M-row CSV of iris-like measurements to `POST /models/{id}/predict` and
reads the whole streamed answer; rows/s from the start of the upload to the last byte.

Usage: python bench/predict.py [--requests 1000] [--latency-rounds 3] [--seconds 3] [--rounds 2] [--rows 1000000]
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, ROOT, Server, markdown_table, median, percentile, run_job, upload  # noqa: E402

RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def latencies(http: httpx.Client, body: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = http.post("/predict", json=body)
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def throughput(server: Server, body: dict, clients: int, seconds: float) -> float:
    """Requests per second from `clients` threads, each on its own keep-alive connection."""
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()
    errors: list[Exception] = []

    def client(i: int) -> None:
        with server.client(timeout=30) as http:
            http.post("/predict", json=body).raise_for_status()
            start.wait()
            try:
                while not stop.is_set():
                    http.post("/predict", json=body).raise_for_status()
                    counts[i] += 1
            except Exception as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def scoring_csv(folder: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    means, stds = np.array([5.8, 3.1, 3.8, 1.2]), np.array([0.8, 0.4, 1.8, 0.8])
    values = np.round(rng.standard_normal((rows, 4)) * stds + means, 1).clip(0.1)
    path = folder / f"score_{rows}.csv"
    pacsv.write_csv(pa.table({name: values[:, j] for j, name in enumerate(RECORD)}), path)
    return path


def score_file(http: httpx.Client, model_id: str, path: Path) -> tuple[float, int]:
    """(seconds from the start of the upload to the last byte of the answer, data rows answered)."""
    t0 = time.perf_counter()
    lines = 0
    with path.open("rb") as fh, http.stream("POST", f"/models/{model_id}/predict",
                                            files={"file": (path.name, fh, "text/csv")}) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            lines += chunk.count(b"\n")
    return time.perf_counter() - t0, lines - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="single-record requests per server and round")
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of one throughput run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    body_records = {"records": [RECORD]}
    with tempfile.TemporaryDirectory(prefix="mlps-bench-") as tmp, Server() as service, \
            service.client(timeout=300) as http:
        ds = upload(http, DATASETS / "iris.csv")
        _, job = run_job(http, {"dataset_id": ds["id"], "target": "species",
                                "model": {"hidden_layers": [64, 64]}, "training": {"epochs": 50}}, timeout=300)
        model_id = job["model_id"]
        body = {"model_id": model_id, **body_records}
        minimal_args = [sys.executable, str(ROOT / "bench" / "minimal_app.py"),
                        str(service.data_dir / "models" / model_id), "--port"]
        minimal = Server(minimal_args, ready_path="/healthz")
        minimal.args.append(str(minimal.port))
        with minimal, minimal.client(timeout=30) as floor:
            latencies(http, body, 50)  # warm-up: model cache, connection, first inference
            latencies(floor, body, 50)
            block = max(1, args.requests // 10)
            rounds: list[tuple[list[float], list[float]]] = []
            for _ in range(args.latency_rounds):
                ours, theirs = [], []
                for _ in range(args.requests // block):
                    ours += latencies(http, body, block)
                    theirs += latencies(floor, body, block)
                rounds.append((ours, theirs))
            ours_rps, theirs_rps = [], []
            for _ in range(args.rounds):
                ours_rps.append(throughput(service, body, args.clients, args.seconds))
                theirs_rps.append(throughput(minimal, body, args.clients, args.seconds))
        def per_round(q: float) -> tuple[list[float], list[float], list[float]]:
            a = [percentile(o, q) for o, _ in rounds]
            b = [percentile(t, q) for _, t in rounds]
            return a, b, [x / y for x, y in zip(a, b, strict=True)]

        p50, p99 = per_round(0.5), per_round(0.99)

        def ratio(figures: list[float]) -> str:
            return f"{median(figures):.2f} ({min(figures):.2f}–{max(figures):.2f})"

        lat_rows = [
            ["service `POST /predict`", f"{1e3 * median(p50[0]):.2f}", f"{1e3 * median(p99[0]):.2f}",
             f"{median(ours_rps):,.0f}"],
            ["minimal FastAPI app, same model", f"{1e3 * median(p50[1]):.2f}", f"{1e3 * median(p99[1]):.2f}",
             f"{median(theirs_rps):,.0f}"],
            ["ratio service / minimal (range over rounds)", ratio(p50[2]), ratio(p99[2]),
             f"{median(ours_rps) / median(theirs_rps):.2f}"],
        ]
        csv = scoring_csv(Path(tmp), args.rows)
        size_mb = csv.stat().st_size / 1e6
        runs = [score_file(http, model_id, csv) for _ in range(args.rounds)]
        for _, n in runs:
            if n != args.rows:
                raise RuntimeError(f"scored {n} rows of {args.rows}")
    print(markdown_table(["server", "latency p50 (ms)", "latency p99 (ms)",
                          f"throughput, {args.clients} clients (requests/s)"], lat_rows))
    print(f"\n{args.requests} single-record requests per server and round in alternating blocks of {block}, "
          f"{args.latency_rounds} rounds; throughput: median of {args.rounds} runs of {args.seconds:g} s each.\n")
    seconds = median([s for s, _ in runs])
    print(markdown_table(["file", "rows", "seconds (median)", "rows/s"],
                         [[f"generated CSV, 4 numeric columns, {size_mb:.0f} MB", f"{args.rows:,}", f"{seconds:.2f}",
                           f"{args.rows / seconds:,.0f}"]]))


if __name__ == "__main__":
    main()
