"""Imported once by the worker's fork server, so that every job's process starts with torch ready.

The first optimizer pulls in torch's compiler stack lazily (seconds) and the first forward/backward
pass initialises kernels and thread pools; the first Parquet read imports pyarrow's dataset layer and pandas
(0.25 s measured); doing all of it here, before any fork, means no job pays for them.
"""

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import service.server.runner  # noqa: F401  (what every job process runs, imported once here)
from service.training.ensemble import EnsembleConfig, train_ensemble
from service.training.features import Encoding, load_columns
from service.training.loop import TrainConfig, TrainData, flush_denormals_for_good, train
from service.training.nets import NetSpec
from service.training.pipeline import SplitSpec, prepare


def _warm_up_data() -> None:
    """A job's data path once: a Parquet file read as the runner reads it, then preprocessed as the ensemble's."""
    table = pa.table({"x": [float(i) for i in range(8)], "c": ["a", "b"] * 4, "y": ["u", "v"] * 4})
    with tempfile.TemporaryDirectory(prefix="mlps-preload-") as tmp:
        path = Path(tmp) / "warm.parquet"
        pq.write_table(table, path)
        prepare(load_columns(path, ["x", "c", "y"]), targets=["y"], features=["x", "c"],
                kinds={"x": "numeric", "c": "categorical"}, task="classification",
                split=SplitSpec(validation_fraction=0.25, test_fraction=0.0, seed=0),
                encoding=Encoding(missing_indicators=True, bins=4, min_category_rows=2))


def _warm_up() -> None:
    _warm_up_data()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3)).astype(np.float32)
    for task, y, n_classes in (("classification", np.arange(8) % 3, 3), ("classification", np.arange(8) % 2, 2),
                               ("regression", rng.normal(size=8).astype(np.float32), 0)):
        data = TrainData(task=task, X_train=X, y_train=y, X_val=X[:4], y_val=y[:4], n_classes=n_classes)
        train(data, NetSpec(hidden_layers=(4,)), TrainConfig(epochs=1, batch_size=4))
        # the default model's kernels (batched products, multi-tensor AdamW, selection) too; not its linear
        # members' LAPACK solves, which only ever run in a job's own process (its thread count set there)
        train_ensemble(data, EnsembleConfig(members=4, folds=2, hidden_layers=(4,), epochs=1, batch_size=4,
                                            linear_members=False))


# One thread while warming: an OpenMP thread pool created here would not survive the fork (the child would
# hang on its first parallel kernel), so the pool is only ever created inside each job's process.
torch.set_num_threads(1)
flush_denormals_for_good()  # inherited by every job process forked from here (run_job sets it again for spawn)
_warm_up()
