"""Whole-number columns with a moderate number of levels get one piecewise-linear bin per level (school or region
codes, counts), where quantile bins would merge neighbouring levels; other columns keep quantile bins."""

import numpy as np
import pyarrow as pa

from service.server.spec import ensemble_bins, ensemble_integer_levels
from service.training.features import LEVEL_ROWS, Encoding, fit_preprocessing, transform

ENCODING = Encoding(missing_indicators=True, bins=8, min_category_rows=2, integer_levels=64)


def _item(values, encoding=ENCODING):
    table = pa.table({"x": pa.array(values)})
    return fit_preprocessing(table, ["x"], {"x": "numeric"}, encoding)["features"][0], table


def test_a_code_column_gets_one_bin_per_level_and_a_linear_fit_then_reads_every_levels_own_effect():
    rng = np.random.default_rng(0)
    codes = rng.integers(1, 41, size=2000)  # 40 school numbers: effects unrelated to their order
    effect = rng.normal(size=41)
    item, table = _item(codes.tolist())
    assert item["bins"] == [0.0, *map(float, range(1, 41))]
    X = transform(table, {"features": [item], "n_inputs": 1 + 40})
    fit = np.linalg.lstsq(np.c_[X, np.ones(len(X))], effect[codes], rcond=None)
    assert np.allclose(np.c_[X, np.ones(len(X))] @ fit[0], effect[codes], atol=1e-4)
    # with quantile bins the same fit cannot: eight bins for forty unrelated levels
    plain, _ = _item(codes.tolist(), Encoding(bins=8))
    Xq = transform(table, {"features": [plain], "n_inputs": 1 + len(plain["bins"]) - 1})
    fq = np.linalg.lstsq(np.c_[Xq, np.ones(len(Xq))], effect[codes], rcond=None)
    residual = effect[codes] - np.c_[Xq, np.ones(len(Xq))] @ fq[0]
    assert residual.var() > 0.5 * effect[codes].var()


def test_whole_numbers_written_as_floats_and_with_missing_values_count_too():
    values = [float(v % 20) for v in range(1000)] + [None] * 10
    item, _ = _item(values)
    assert item["bins"] == [-1.0, *map(float, range(20))] and item["missing_indicator"] is True


def test_other_columns_keep_quantile_bins():
    rng = np.random.default_rng(1)
    decimals, _ = _item(rng.normal(size=2000).tolist())
    assert len(decimals["bins"]) == 9  # 8 quantile bins
    few, _ = _item([v % 9 for v in range(2000)])  # 9 levels: no more than the 8 bins' 9 edges
    assert len(few["bins"]) == 9 and few["bins"][0] == 0.0
    many, _ = _item([v % 65 for v in range(5000)])  # 65 levels: over integer_levels
    assert len(many["bins"]) == 9
    sparse, _ = _item([v % 30 for v in range(LEVEL_ROWS * 30 - 1)])  # fewer than LEVEL_ROWS rows per level
    assert len(sparse["bins"]) == 9
    off, _ = _item([v % 30 for v in range(2000)], Encoding(bins=8))  # integer_levels 0: quantile bins only
    assert len(off["bins"]) == 9


def test_the_level_budget_is_each_numeric_columns_share_of_the_bin_inputs():
    assert ensemble_integer_levels(2) == 128 and ensemble_integer_levels(64) == 4
    # many numeric columns: the budget is no more than the quantile bins, so nothing changes
    assert ensemble_integer_levels(64) <= ensemble_bins(64)
