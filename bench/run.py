"""Run every benchmark and rewrite docs/benchmarks.md with the figures, the machine and the command."""

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def queue_rows() -> list[str]:
    rows = []
    urls = [""]
    if os.environ.get("MLPS_TEST_POSTGRES_URL"):
        urls.append(os.environ["MLPS_TEST_POSTGRES_URL"])
    for url in urls:
        cmd = [sys.executable, str(ROOT / "bench" / "queue_latency.py"), "--jobs", "100", "--markdown"]
        if url:
            cmd += ["--database-url", url]
        rows.append(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip())
    return rows


def main() -> None:
    started = datetime.now(UTC)
    machine = (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} torch threads")
    rows = queue_rows()
    OUT.write_text(f"""# Benchmarks

Produced by `make bench` (or `scripts/with-postgres make bench` to include PostgreSQL) on {started:%Y-%m-%d}.
Machine: {machine}. These machines are shared and noisy: compare figures from the same run only.

## Queue pickup and service overhead

`bench/queue_latency.py`: real `mlps serve` (API + one worker process), iris data set.
Pickup = `started_at − created_at` of a job submitted to an idle worker, over 100 jobs submitted one at a time.
Overhead = submit-to-succeeded wall time of an iris job with 50 epochs, minus the training time it reports
(median of 5).

| database | pickup p50 (ms) | pickup p99 (ms) | submit → succeeded (s) | training (s) | overhead (s) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
""")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
