"""service.training.features: preprocessing fitted on the training rows, splits, and records to a table."""

import numpy as np
import pyarrow as pa
import pytest

from service.training.features import fit_preprocessing, records_to_table, split_rows, transform
from service.training.ingest import DataError


def test_preprocessing_imputes_standardises_and_one_hot_encodes():
    train = pa.table({"x": [1.0, None, 3.0, 5.0], "c": ["a", "b", None, "a"]})
    params = fit_preprocessing(train, ["x", "c"], {"x": "numeric", "c": "categorical"})
    x = params["features"][0]
    assert x["fill"] == 3.0  # median of 1, 3, 5
    assert params["features"][1] == {"name": "c", "kind": "categorical", "categories": ["a", "b"], "fill": "a"}
    X = transform(train, params)
    assert X.shape == (4, 3)
    assert X[:, 0].mean() == pytest.approx(0.0, abs=1e-6) and X[:, 0].std() == pytest.approx(1.0, abs=1e-6)
    assert X[2, 1:].tolist() == [1.0, 0.0]  # missing category → most frequent
    unseen = transform(pa.table({"x": [2.0], "c": ["zzz"]}), params)
    assert unseen[0, 1:].tolist() == [0.0, 0.0]  # never seen in training → all zeros


def test_stratified_split_is_seeded_and_keeps_class_shares():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    a = split_rows(100, 0.2, seed=3, strata=y)
    b = split_rows(100, 0.2, seed=3, strata=y)
    assert np.array_equal(a.validation, b.validation)
    assert np.bincount(y[a.validation]).tolist() == [10, 6, 4]
    assert len(np.intersect1d(a.train, a.validation)) == 0 and len(a.train) + len(a.validation) == 100


def test_records_errors_name_record_and_column():
    feats = [{"name": "x", "kind": "numeric"}, {"name": "c", "kind": "categorical"}]
    with pytest.raises(DataError, match="record 1: column 'x' is missing"):
        records_to_table([{"x": 1, "c": "a"}, {"c": "b"}], feats)
    with pytest.raises(DataError, match="record 0: column 'x' expects a number"):
        records_to_table([{"x": "abc", "c": "a"}], feats)
