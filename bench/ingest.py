"""Ingest: upload a generated CSV (50 numeric columns, about 500 MB) through `POST /datasets`.

The file is generated once into a temp dir (numpy + pyarrow), streamed from disk to a real `mlps serve`, and
deleted afterwards. MB/s is the file size over the time from the start of the upload to the 201 answer (parsing,
Parquet conversion and column statistics included). Peak RSS is VmHWM of the API process (the `mlps serve`
process itself; its worker is a separate process), read after the uploads.

Usage: python bench/ingest.py [--mb 500] [--rounds 2]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, markdown_table, median, upload, vm_hwm_bytes  # noqa: E402

COLUMNS = 50


def generate(folder: Path, megabytes: int, seed: int = 0) -> Path:
    """A CSV of about `megabytes` MB: 50 float columns, written in blocks to keep memory flat."""
    rng = np.random.default_rng(seed)
    path = folder / f"ingest_{megabytes}mb.csv"
    names = [f"x{j}" for j in range(COLUMNS)]
    written, target = 0, megabytes * 1_000_000
    with path.open("wb") as out:
        while written < target:
            block = rng.standard_normal((10_000, COLUMNS))
            buf = io.BytesIO()
            pacsv.write_csv(pa.table({n: block[:, j] for j, n in enumerate(names)}), buf,
                            write_options=pacsv.WriteOptions(include_header=written == 0))
            written += out.write(buf.getvalue())
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlps-bench-") as tmp, Server() as server, \
            server.client(timeout=600) as http:
        t0 = time.perf_counter()
        path = generate(Path(tmp), args.mb)
        generated_s = time.perf_counter() - t0
        size = path.stat().st_size
        before = vm_hwm_bytes(server.pid)
        seconds, rows = [], 0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ds = upload(http, path)
            seconds.append(time.perf_counter() - t0)
            rows = ds["n_rows"]
        peak = vm_hwm_bytes(server.pid)
        path.unlink()
    s = median(seconds)
    print(markdown_table(["file", "rows", "upload → 201 (s, median)", "MB/s", "API peak RSS (MB)",
                          "API RSS before (MB)"],
                         [[f"{size / 1e6:.0f} MB CSV, {COLUMNS} numeric columns", f"{rows:,}", f"{s:.2f}",
                           f"{size / 1e6 / s:.0f}", f"{peak / 1e6:.0f}", f"{before / 1e6:.0f}"]]))
    print(f"\nMedian of {args.rounds} uploads; the file took {generated_s:.1f} s to generate. Peak RSS is VmHWM of "
          "the API process after the uploads.")


if __name__ == "__main__":
    main()
