"""Run every benchmark and rewrite docs/benchmarks.md with the figures, the machine and the command."""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402

OUT = ROOT / "docs" / "benchmarks.md"


def run(script: str, *args: str) -> tuple[str, float]:
    """(stdout of one benchmark script, its wall time in seconds); its stderr passes through."""
    t0 = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "bench" / script), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout.strip()
    print(out, flush=True)
    return out, time.perf_counter() - t0


def queue_rows() -> tuple[str, float]:
    rows, seconds = [], 0.0
    urls = [""]
    if os.environ.get("MLPS_TEST_POSTGRES_URL"):
        urls.append(os.environ["MLPS_TEST_POSTGRES_URL"])
    for url in urls:
        out, s = run("queue_latency.py", "--jobs", "100", "--markdown", *(["--database-url", url] if url else []))
        rows.append(out)
        seconds += s
    return "\n".join(rows), seconds


def main() -> None:
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    training, t_training = run("training.py")
    sklearn, t_sklearn = run("vs_sklearn.py")
    quality, t_quality = run("quality.py")
    queue, t_queue = queue_rows()
    predict, t_predict = run("predict.py")
    infer, t_infer = run("infer.py")
    ingest, t_ingest = run("ingest.py")
    streaming, t_streaming = run("streaming.py")
    search, t_search = run("search.py", "--trials", "32", "--markdown")
    total = time.perf_counter() - t0
    OUT.write_text(f"""# Benchmarks

Produced by `make bench` (that is, `.venv/bin/python bench/run.py`; `scripts/with-postgres make bench` adds the
PostgreSQL queue row) on {started:%Y-%m-%d %H:%M} UTC in {total / 60:.1f} minutes. Each script under `bench/` also
runs on its own and prints its Markdown; its docstring says exactly what it measures.

Machine: {machine()}.

These machines are shared and noisy: every comparison below is measured side by side in the same run, repeated,
and reported as the median (ratios as the median of per-round ratios). Compare figures from the same run only.

## Training throughput (`bench/training.py`, {t_training:.0f} s)

The engine is `service.training.loop.train` as a job runs it (per-epoch train figures included: loss and accuracy
each epoch, every metric at the last), with no validation data: all 60 000 rows train and early stopping has nothing
to monitor (patience 0 as well). Train figures come from the epoch's own forward passes. (a) is the lecture's loop
over `DataLoader(TensorDataset(X, y), batch_size=B, shuffle=True)`, (b) a hand-written loop over pre-loaded tensors
with randperm slicing and torch's default optimizer implementation; all three train 784-256-256-10 ReLU with the
same settings (Adam at lr 1e-3, or SGD at lr 0.01 with momentum 0.9), epochs and seed, on one torch thread (the
script's docstring says why). Figures are medians of interleaved rounds, ± half their range. Targets: engine ≥ 1.3 ×
(a) at batch 128 with either optimizer, ≥ 0.97 × (b), ≥ 75 % of the measured matmul FLOP/s at batch 1024; under
load (a second process burning a core) the engine, with the thread count a job would choose, within 1.2 × of its
quiet speed.

{training}

## Versus scikit-learn (`bench/vs_sklearn.py`, {t_sklearn:.0f} s)

A job through the real API (`mlps serve`, submit → succeeded) against `MLPClassifier` with the same hidden layers,
activation, Adam, epochs (`max_iter`; no early stopping on either side), batch size, learning rate and no L2 penalty.
sklearn trains on the job's own training rows and preprocessing and is scored on the job's test rows
(`test_fraction` 0.2; XOR, 4 rows, is scored on its own rows, ours by predicting through the API). Our time includes
everything from submit to succeeded; sklearn's is `fit` alone. A ratio above 1 means the job finished first. The
diabetes regression set is left out. Target: faster at equal or better accuracy on the large set, and on iris and
breast_cancer (200 epochs) submit → succeeded ≤ sklearn's fit. The second table runs the default spec (the ensemble)
against `MLPClassifier((64, 64))` with scikit-learn's own defaults.

{sklearn}

## Model quality (`bench/quality.py`, {t_quality:.0f} s)

The service's default model (a job with only `dataset_id`, `target` and a seed, through the real API) against
scikit-learn and LightGBM baselines in a standard impute + scale + one-hot pipeline, on the test rows of an 80/20
split (seed 0, stratified for classes): accuracy for classification, R² for regression. Ours: mean and minimum
over seeds 0, 1, 2 and their spread; a baseline's score is its mean over the same rounds. Wall time: our job
from submit to succeeded, against the scikit-learn MLP's `fit` alone (median of the rounds). The script's
docstring names every data set's source. Targets: mean gap to the best baseline ≥ 0, no set below −0.02, seed
spread ≤ 0.02, our job ≤ 1.5 × the MLP's fit below 5 000 rows. The scores are deterministic on the CPU (reruns
give the same digits); the wall times are not: reruns on this machine have differed by up to 40 %.

{quality}

## Queue pickup and service overhead (`bench/queue_latency.py`, {t_queue:.0f} s)

Real `mlps serve` (API + one worker process), iris data set. Pickup = `started_at − created_at` of a job submitted
to an idle worker, over 100 jobs submitted one at a time. Overhead = submit-to-succeeded wall time of an iris job
with 50 epochs, minus the training time it reports (median of 5). Targets: overhead ≤ 0.5 s, pickup p50 ≤ 50 ms.

| database | pickup p50 (ms) | pickup p99 (ms) | submit → succeeded (s) | training (s) | overhead (s) |
|---|---|---|---|---|---|
{queue}

## Predict (`bench/predict.py`, {t_predict:.0f} s)

Single-record `POST /predict` over keep-alive HTTP (httpx) on loopback, against `bench/minimal_app.py`: a bare
FastAPI app in its own uvicorn process serving the same model folder (loaded with the project's artifact loader)
through the same preprocessing and inference functions, in three interleaved rounds. The service answers through one
ASGI middleware and writes no access-log line at the default log level. Targets: p50 ≤ 1.1 × and p99 ≤ 1.2 × the
bare app. Batch scoring streams a
generated CSV through `POST /models/{{id}}/predict`; target ≥ 200 000 rows/s.

{predict}

## Open Inference Protocol and ONNX (`bench/infer.py`, {t_infer:.0f} s)

The same records through `POST /predict`, through the KServe v2 `POST /v2/models/{{id}}/infer` (JSON tensors, and
binary tensors as tritonclient sends them), through `tritonclient.http` itself, and through the file
`GET /models/{{id}}/export?format=onnx` returns, run in onnxruntime in the benchmark's own process (no HTTP). An iris
model (hidden 64-64) in a real `mlps serve`; one request at a time over loopback, in alternating blocks.

{infer}

## Ingest (`bench/ingest.py`, {t_ingest:.0f} s)

A generated CSV (50 numeric columns) uploaded through `POST /datasets` to `mlps serve`. Targets: ≥ 100 MB/s end to
end, API peak RSS ≤ 400 MB.

{ingest}

## Data larger than memory (`bench/streaming.py`, {t_streaming:.0f} s)

A generated data set whose prepared matrix is several times the training memory budget (`MLPS_TRAIN_MEMORY_BYTES`,
24 MiB here), prepared and trained for one epoch by the in-memory path (with a budget big enough for it) and by the
streaming path, each in a fresh process on one torch thread, interleaved, three rounds (medians ± half their range).
Peak RSS growth counts from the process's memory after its imports; it includes torch's and the network's own working
memory, which the budget does not bound.

{streaming}

## Hyperparameter search (`bench/search.py`, {t_search:.0f} s)

A 32-trial random search (learning rate log-uniform, hidden layers, dropout, batch size; one MLP of at most 100
epochs with early stopping, metric val_accuracy, parallelism 4) on breast_cancer.csv through the real API: with
`mlps serve` (one worker) and with a second `mlps worker` beside it, from `POST /searches` to the search's end;
against the same 32 configurations as sequential jobs (submit, wait, repeat) and against scikit-learn's
`RandomizedSearchCV(MLPClassifier)` over the same space (no dropout) with one validation split, whose time is `fit`
alone. Quality: the test accuracy (20 % held out) of the best trial, of the default spec's job, and of sklearn's
refitted best candidate (its own 20 % split). One run each; the script's docstring has the details.

{search}
""")
    print(f"\nwrote {OUT.relative_to(ROOT)} in {total / 60:.1f} minutes")


if __name__ == "__main__":
    main()
