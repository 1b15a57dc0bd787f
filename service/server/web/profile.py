"""Histograms of a data set's numeric columns for its profile page: fixed bins between each column's minimum and
maximum (from the column summary taken at upload), counted over the stored Parquet file's first rows."""

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

BINS = 20
MAX_ROWS = 1_000_000  # a profile, not a census: a large file's first million rows
MAX_COLUMNS = 200


class Histogram(BaseModel):
    column: str
    edges: list[float] = Field(description="BINS + 1 bin edges, from the column's minimum to its maximum")
    counts: list[int]


class Histograms(BaseModel):
    rows_read: int = Field(description="Rows counted (at most the first million)")
    items: list[Histogram]


def histograms(path: Path, columns: list[dict[str, Any]]) -> Histograms:
    """The numeric columns' histograms (the first MAX_COLUMNS of them); none for an array (.npz) data set."""
    ranges = {c["name"]: (float(c["stats"]["min"]), float(c["stats"]["max"])) for c in columns
              if c.get("kind") == "numeric" and "min" in c.get("stats", {}) and "max" in c.get("stats", {})}
    names = list(ranges)[:MAX_COLUMNS]
    if path.suffix != ".parquet" or not names:
        return Histograms(rows_read=0, items=[])
    edges = {n: np.linspace(lo, hi if hi > lo else lo + 1.0, BINS + 1) for n, (lo, hi) in ranges.items()}
    counts = {n: np.zeros(BINS, dtype=np.int64) for n in names}
    rows = 0
    with pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=65_536, columns=names):
            batch = batch.slice(0, MAX_ROWS - rows)  # at most MAX_ROWS in all
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
                counts[name] += np.histogram(values[np.isfinite(values)], bins=edges[name])[0]
            rows += batch.num_rows
            if rows >= MAX_ROWS:
                break
    return Histograms(rows_read=rows, items=[Histogram(column=n, edges=[round(float(e), 6) for e in edges[n]],
                                                       counts=[int(c) for c in counts[n]]) for n in names])
