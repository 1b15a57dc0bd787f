"""Data larger than memory: the streaming path against the in-memory path on the same generated data set.

A Parquet file is generated once (160 000 rows: eight normal numbers, one with 5 % missing, a colour of three levels,
a site of 200 levels and a binary class; row groups of 65 536 rows, as ingest writes them). Its prepared matrix
(about 150 MB for the ensemble's encoding, 72 MB for a single network's) is several times the 24 MiB budget.

Each measurement is a fresh Python process that imports everything, notes its resident memory, then does what a
job's training process does: prepare the data (the in-memory path: `load_columns` + `pipeline.prepare`; the
streaming path: `streaming.plan_for_job` with the budget + `prepare_streamed`) and train one epoch (the default
ensemble's shape for this size, 8 members of 64-64 at batch 1024 on the shared split, or an MLP of one hidden layer
of 64 at batch 256), on one torch thread. Peak RSS growth = VmHWM at the end − VmRSS after the imports; samples/s =
training rows × epochs / training seconds (preparation excluded; "prepare s" is shown apart). The two paths run
interleaved, three rounds; figures are medians ± half their range.

Usage: python bench/streaming.py [--rounds 3] [--budget-mb 24]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, markdown_table, median  # noqa: E402

ROWS = 160_000
NUMERIC = [f"x{i}" for i in range(8)]


def generate(path: Path, seed: int = 0) -> dict:
    """Write the data set; answer its column summaries as a data set row holds them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=ROWS) for name in NUMERIC}
    colour = rng.choice(["red", "green", "blue"], ROWS)
    site = np.char.add("site-", rng.integers(0, 200, ROWS).astype(str))
    signal = columns["x0"] - 0.7 * columns["x1"] + 0.5 * columns["x2"] ** 2 - 0.5 + (colour == "red") \
        + rng.normal(scale=0.3, size=ROWS)
    columns["x3"] = np.where(rng.random(ROWS) < 0.05, np.nan, columns["x3"])
    table = pa.table({**{k: pa.array(v, from_pandas=True) for k, v in columns.items()}, "colour": colour,
                      "site": site, "label": np.where(signal > 0, "pos", "neg")})
    pq.write_table(table, path, row_group_size=65_536, compression="zstd")
    summaries = {}
    for name in table.column_names:
        col = table.column(name)
        item = {"n_unique": len(pc.unique(col)), "n_missing": col.null_count, "stats": {}}
        if name in NUMERIC:
            item["stats"] = {"min": pc.min(col).as_py(), "max": pc.max(col).as_py()}
        summaries[name] = item
    return summaries


def one(path: Path, summaries_file: Path, mode: str, model: str, budget: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from service.server.runner import encoding_for  # noqa: F401  (the import cost is paid before the baseline)
    from service.training import streaming
    from service.training.ensemble import EnsembleConfig, train_ensemble
    from service.training.features import Encoding, load_columns
    from service.training.loop import TrainConfig, train
    from service.training.nets import NetSpec
    from service.training.pipeline import SplitSpec, prepare

    torch.set_num_threads(1)
    summaries = json.loads(summaries_file.read_text())
    kinds = {**{n: "numeric" for n in NUMERIC}, "colour": "categorical", "site": "categorical"}
    features = list(kinds)
    ensemble = model == "ensemble"
    encoding = Encoding(missing_indicators=True, bins=16, min_category_rows=2) if ensemble else Encoding()
    batch = 1024 if ensemble else 256
    streaming.reset_peak_rss()
    base = streaming.current_rss() or 0
    t0 = time.perf_counter()
    if mode == "stream":
        plan, _ = streaming.plan_for_job(path, n_rows=ROWS, columns=summaries, features=features, kinds=kinds,
                                         targets=["label"], encoding=encoding, budget=budget, model_type=model,
                                         optimizer="adamw" if ensemble else "adam", seed=0, validation_fraction=0.2,
                                         test_fraction=0.0, batch_size=batch)
        assert plan is not None
        prepared = streaming.prepare_streamed(plan, targets=["label"], features=features, kinds=kinds,
                                              task="classification", encoding=encoding)
    else:
        prepared = prepare(load_columns(path, [*features, "label"]), targets=["label"], features=features,
                           kinds=kinds, task="classification", split=SplitSpec(validation_fraction=0.2),
                           encoding=encoding)
    prepare_s = time.perf_counter() - t0
    if ensemble:
        cfg = EnsembleConfig(members=8, folds=1, epochs=1, batch_size=batch, early_stopping_patience=0)
        result = (streaming.train_ensemble_streamed(prepared.stream, prepared.data, cfg) if mode == "stream"
                  else train_ensemble(prepared.data, cfg))
        accuracy = result.kept_metrics["val_accuracy"]
    else:
        spec, config = NetSpec(type="mlp", hidden_layers=(64,)), TrainConfig(epochs=1, batch_size=batch,
                                                                             early_stopping_patience=0)
        result = (streaming.train_network_streamed(prepared.stream, prepared.data, spec, config)
                  if mode == "stream" else train(prepared.data, spec, config))
        accuracy = result.history[-1]["val_accuracy"]
    seconds = sum(row["seconds"] for row in result.history)
    return {"growth": (streaming.peak_rss() or 0) - base, "samples_per_s": prepared.info["n_train"] / seconds,
            "prepare_s": prepare_s, "accuracy": accuracy,
            "estimated": streaming.estimate_bytes(ROWS, summaries, features, kinds, ["label"], encoding)}


def spread(values: list[float], fmt: str) -> str:
    return f"{median(values):{fmt}} ± {(max(values) - min(values)) / 2:{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-mb", type=int, default=24)
    ap.add_argument("--one", nargs=5, metavar=("PATH", "SUMMARIES", "MODE", "MODEL", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        path, summaries, mode, model, budget = args.one
        print(json.dumps(one(Path(path), Path(summaries), mode, model, int(budget))))
        return
    budget = args.budget_mb << 20
    with tempfile.TemporaryDirectory(prefix="mlps-bench-") as tmp:
        path, summaries_file = Path(tmp) / "big.parquet", Path(tmp) / "summaries.json"
        summaries_file.write_text(json.dumps(generate(path)))
        found: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for model in ("ensemble", "mlp"):
                for mode in ("memory", "stream"):  # interleaved
                    out = subprocess.run([sys.executable, __file__, "--one", str(path), str(summaries_file), mode,
                                          model, str(budget if mode == "stream" else 1 << 40)],
                                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
                    found.setdefault((model, mode), []).append(json.loads(out.strip().splitlines()[-1]))
        rows = []
        for (model, mode), runs in found.items():
            rows.append([model, "streamed" if mode == "stream" else "in memory",
                         f"{runs[0]['estimated'] / 1e6:.0f}", f"{budget / 1e6:.0f}" if mode == "stream" else "—",
                         spread([r["growth"] / 1e6 for r in runs], ".0f"),
                         spread([r["samples_per_s"] for r in runs], ",.0f"),
                         spread([r["prepare_s"] for r in runs], ".2f"),
                         f"{median([r['accuracy'] for r in runs]):.3f}"])
        print(f"Data: {ROWS:,} rows, {path.stat().st_size / 1e6:.0f} MB of Parquet; {args.rounds} rounds.\n")
        print(markdown_table(["model", "path", "prepared matrix (MB)", "budget (MB)", "peak RSS growth (MB)",
                              "samples/s", "prepare s", "val accuracy"], rows))


if __name__ == "__main__":
    main()
