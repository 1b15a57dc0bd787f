"""Open Inference Protocol latency beside `/predict`, and the exported ONNX file in onnxruntime.

An iris model (hidden 64-64, 50 epochs) is trained through a real `mlps serve`. The same records are then answered
by `POST /predict` (JSON records), `POST /v2/models/{id}/infer` with JSON tensors, the same with binary tensors (the
protocol's binary extension, which tritonclient sends by default), and by `tritonclient.http` itself (its own
keep-alive connection and encoding) against the same server, all over loopback, one request at a time, in
alternating blocks; p50 / p99 over all. For 1 record and for 1,000 records per request. The last row runs the file
`GET /models/{id}/export?format=onnx` returns in onnxruntime in this process (no HTTP), as a floor.

Usage: python bench/infer.py [--requests 500] [--batch 1000]
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, Server, markdown_table, median, percentile, run_job, upload  # noqa: E402

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
HEADER = "Inference-Header-Content-Length"


def records(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    means, stds = np.array([5.8, 3.1, 3.8, 1.2]), np.array([0.8, 0.4, 1.8, 0.8])
    values = np.round(rng.standard_normal((n, 4)) * stds + means, 1).clip(0.1)
    return [dict(zip(COLUMNS, row, strict=True)) for row in values.tolist()]


def columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {c: np.array([r[c] for r in rows], dtype=np.float64) for c in COLUMNS}


def json_tensors(rows: list[dict[str, float]]) -> bytes:
    return json.dumps({"inputs": [{"name": c, "datatype": "FP64", "shape": [len(v)], "data": v.tolist()}
                                  for c, v in columns(rows).items()]}).encode()


def binary_tensors(rows: list[dict[str, float]]) -> tuple[bytes, dict[str, str]]:
    cols = columns(rows)
    head = json.dumps({"inputs": [{"name": c, "datatype": "FP64", "shape": [len(v)],
                                   "parameters": {"binary_data_size": v.nbytes}} for c, v in cols.items()],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(v.tobytes() for v in cols.values()), {HEADER: str(len(head)),
                                                                 "Content-Type": "application/octet-stream"}


def interfaces(http: httpx.Client, trit: triton.InferenceServerClient, onnx_session: ort.InferenceSession,
               headers: dict[str, str], model_id: str, rows: list[dict[str, float]]) -> dict[str, Callable[[], object]]:
    """One call per interface answering `rows`, its request encoded beforehand."""
    infer_url = f"/v2/models/{model_id}/infer"
    plain = json_tensors(rows)
    binary, binary_headers = binary_tensors(rows)
    feeds = columns(rows)
    trit_inputs = []
    for c, v in feeds.items():
        tensor = triton.InferInput(c, [len(v)], "FP64")
        tensor.set_data_from_numpy(v)
        trit_inputs.append(tensor)

    def post(path: str, **kw: Any) -> Callable[[], object]:
        return lambda: http.post(path, **kw).raise_for_status()

    return {
        "`POST /predict` (JSON records)": post("/predict", json={"model_id": model_id, "records": rows}),
        "`POST /v2/models/{id}/infer`, JSON tensors": post(infer_url, content=plain,
                                                            headers={"Content-Type": "application/json"}),
        "`POST /v2/models/{id}/infer`, binary tensors": post(infer_url, content=binary, headers=binary_headers),
        # a fresh dict per call: tritonclient adds its own headers to the one it is given
        "tritonclient.http `infer` (binary tensors)": lambda: trit.infer(model_id, trit_inputs, headers=dict(headers)),
        "onnxruntime, exported file, in process": lambda: onnx_session.run(None, feeds),
    }


def timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500, help="requests per interface and batch size")
    ap.add_argument("--batch", type=int, default=1000, help="records per request in the second column")
    args = ap.parse_args()
    with Server() as service, service.client(timeout=300) as http:
        ds = upload(http, DATASETS / "iris.csv")
        _, job = run_job(http, {"dataset_id": ds["id"], "target": "species",
                                "model": {"type": "mlp", "hidden_layers": [64, 64]}, "training": {"epochs": 50}},
                         timeout=300)
        model_id = job["model_id"]
        exported = http.get(f"/models/{model_id}/export", params={"format": "onnx"})
        exported.raise_for_status()
        onnx_session = ort.InferenceSession(exported.content, providers=["CPUExecutionProvider"])
        trit = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
        results: dict[str, dict[int, list[float]]] = {}
        for n in (1, args.batch):
            rows = records(n)
            calls = interfaces(http, trit, onnx_session, service.headers, model_id, rows)
            for call in calls.values():
                timed(call, 30)  # warm-up: model cache, connections
            block = max(1, args.requests // 10)
            for name in calls:
                results.setdefault(name, {})[n] = []
            for _ in range(args.requests // block):
                for name, call in calls.items():
                    results[name][n] += timed(call, block)
        trit.close()
    base = {n: median(results["`POST /predict` (JSON records)"][n]) for n in (1, args.batch)}
    rows_out = []
    for name, by_n in results.items():
        cells = [name]
        for n in (1, args.batch):
            cells += [f"{1e3 * median(by_n[n]):.2f}", f"{1e3 * percentile(by_n[n], 0.99):.2f}",
                      f"{median(by_n[n]) / base[n]:.2f}"]
        rows_out.append(cells)
    print(markdown_table(["interface", "1 record p50 (ms)", "p99 (ms)", "÷ /predict",
                          f"{args.batch:,} records p50 (ms)", "p99 (ms)", "÷ /predict"], rows_out))
    print(f"\n{args.requests} requests per interface and batch size, in alternating blocks of {block}.")


if __name__ == "__main__":
    main()
