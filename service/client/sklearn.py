"""scikit-learn estimators that train and predict through an MLP Service: `MLPServiceClassifier` and
`MLPServiceRegressor`.

    from sklearn.model_selection import cross_val_score
    from service.client.sklearn import MLPServiceClassifier

    clf = MLPServiceClassifier("http://127.0.0.1:8000", model_type="mlp", epochs=50)
    cross_val_score(clf, X, y, cv=5)

`fit` uploads X and y as one Parquet data set, submits a training job with the estimator's spec fields and waits
for it; `predict` and `predict_proba` send the rows to POST /predict. A fitted estimator holds the ids of the data
set, the job and the model (`dataset_id_`, `job_id_`, `model_id_`), never the network: it can be cloned, pickled and
put in a Pipeline or GridSearchCV like any other estimator, as long as the server keeps the model.

X is a numeric array (columns named x0, x1, ...) or a pandas DataFrame (its column names and kinds travel as they
are, categorical columns included). Missing values (NaN, None) are allowed: the service imputes them. Needs
scikit-learn (`pip install scikit-learn`), and pandas for DataFrames; nothing of the server side.
"""

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from service.client.http import ApiError, Client

# Records per POST /predict (the server's default limit is 10 000 per request).
PREDICT_BATCH = 5_000


def _is_frame(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "iloc")


class _MLPServiceEstimator(BaseEstimator):  # type: ignore[misc]
    """What the classifier and the regressor share: the spec's fields as parameters, upload, train, predict."""

    _task: str

    def __init__(self, url: str | None = None, api_key: str | None = None, *, model_type: str = "ensemble",
                 hidden_layers: tuple[int, ...] | None = None, activation: str | None = None,
                 dropout: float | None = None, members: int | None = None, folds: int | None = None,
                 epochs: int | None = None, batch_size: int | None = None, optimizer: str | None = None,
                 learning_rate: float | None = None, weight_decay: float | None = None,
                 validation_fraction: float | None = None, early_stopping_patience: int | None = None,
                 seed: int = 0, device: str = "auto", max_runtime_s: int | None = None,
                 timeout: float = 3600.0) -> None:
        # scikit-learn's contract: store the parameters as given, check them in fit (here: the server checks)
        self.url = url
        self.api_key = api_key
        self.model_type = model_type
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.dropout = dropout
        self.members = members
        self.folds = folds
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.early_stopping_patience = early_stopping_patience
        self.seed = seed
        self.device = device
        self.max_runtime_s = max_runtime_s
        self.timeout = timeout

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # the service imputes missing values (fitted on the training rows)
        return tags

    # ------------------------------------------------------------ the service

    def _client(self) -> Client:
        # One per call, not kept: the estimator stays a plain object that clone, pickle and joblib can copy.
        return Client(self.url, api_key=self.api_key, timeout=60.0)

    def _spec(self, dataset_id: str, target: str, features: list[str]) -> dict[str, Any]:
        """The job spec: the estimator's parameters that are set (the service's defaults for the others)."""
        model = {"type": self.model_type, "activation": self.activation, "dropout": self.dropout,
                 "members": self.members, "folds": self.folds,
                 "hidden_layers": None if self.hidden_layers is None else [int(w) for w in self.hidden_layers]}
        training = {"epochs": self.epochs, "batch_size": self.batch_size, "optimizer": self.optimizer,
                    "learning_rate": self.learning_rate, "weight_decay": self.weight_decay,
                    "validation_fraction": self.validation_fraction,
                    "early_stopping_patience": self.early_stopping_patience, "seed": self.seed}
        spec: dict[str, Any] = {"dataset_id": dataset_id, "target": target, "features": features, "task": self._task,
                                "model": {k: v for k, v in model.items() if v is not None},
                                "training": {k: v for k, v in training.items() if v is not None},
                                "device": self.device}
        if self.max_runtime_s is not None:
            spec["max_runtime_s"] = self.max_runtime_s
        return spec

    def _train(self, table: pa.Table, target_values: pa.Array) -> None:
        """Upload the table with its target column, train, and keep the ids of what the service made."""
        features = list(table.column_names)
        target = next(name for name in ("target", *(f"target_{i}" for i in range(len(features) + 1)))
                      if name not in features)
        table = table.append_column(target, target_values)
        with tempfile.TemporaryDirectory() as folder, self._client() as client:
            path = Path(folder) / f"{type(self).__name__}.parquet"
            pq.write_table(table, path)
            try:
                dataset = client.upload_dataset(path, name=f"{type(self).__name__}.fit")
                job = client.submit_job(self._spec(dataset["id"], target, features))
            except ApiError as exc:
                if exc.status == 422:
                    raise ValueError(f"the service refused the training data or the parameters: {exc.detail}") \
                        from exc
                raise
            job = client.wait(job["id"], timeout=self.timeout)
            if job["status"] != "succeeded":
                raise ValueError(f"training job {job['id']} {job['status']}: {job['error']}")
            assert job["model_id"] is not None  # a succeeded job has its model
            self.dataset_id_, self.job_id_, self.model_id_ = dataset["id"], job["id"], job["model_id"]
            self.metrics_: dict[str, Any] = dict(job.get("metrics") or {})

    def _predict_records(self, X: Any) -> list[dict[str, Any]]:
        """POST /predict for every row of X, in batches; the service's answers, concatenated."""
        check_is_fitted(self, "model_id_")
        records = self._table(X, reset=False).to_pylist()
        answers = []
        with self._client() as client:
            for start in range(0, len(records), PREDICT_BATCH):
                answer = client.predict(self.model_id_, records=records[start:start + PREDICT_BATCH])
                answers.append(answer)
        return [{"prediction": p, "probabilities": None if a["probabilities"] is None else a["probabilities"][i]}
                for a in answers for i, p in enumerate(a["predictions"])]

    # ------------------------------------------------------------ inputs

    def _fit_inputs(self, X: Any, y: Any, *, y_numeric: bool) -> tuple[pa.Table, NDArray[Any]]:
        """X as a table (its column names fitted: n_features_in_, feature_names_in_) and y as a 1-d array, both
        checked as scikit-learn checks them."""
        if _is_frame(X):
            validate_data(self, X, skip_check_array=True)
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
            y = column_or_1d(check_array(y, ensure_2d=False, dtype=np.float64 if y_numeric else None,
                                         ensure_all_finite=True), warn=True)
            check_consistent_length(X, y)
        else:
            _, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan", y_numeric=y_numeric)
        if len(y) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 samples to train; got {len(y)} sample")
        # the data set's column names: a DataFrame's own (as text), else x0, x1, ...
        self._columns = ([str(c) for c in X.columns] if _is_frame(X) else
                         [f"x{j}" for j in range(self.n_features_in_)])
        return self._table(X, reset=True), np.asarray(y)

    def _table(self, X: Any, *, reset: bool) -> pa.Table:
        """X as a table with the fitted column names: a DataFrame's own columns, or a numeric array's x0, x1, ..."""
        if _is_frame(X):
            validate_data(self, X, reset=reset, skip_check_array=True)
            if len(X) == 0:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
            table = pa.Table.from_pandas(X, preserve_index=False)
            numeric = [c for c in table.columns if pa.types.is_floating(c.type)]
            if any(pc.any(pc.is_inf(c)).as_py() for c in numeric):
                raise ValueError("Input X contains infinity: the service imputes missing values (NaN), not infinite "
                                 "ones")
            # by position, as scikit-learn matches columns (validate_data warned if the names differ)
            return table.rename_columns(self._columns)
        array = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite="allow-nan")
        return pa.table({name: pa.array(array[:, j], from_pandas=True) for j, name in enumerate(self._columns)})


class MLPServiceClassifier(ClassifierMixin, _MLPServiceEstimator):  # type: ignore[misc]
    """A classifier trained by an MLP Service (task 'classification'); every parameter but url, api_key and timeout
    is a field of the job spec (None: the service's default for the model type)."""

    _task = "classification"

    def fit(self, X: Any, y: Any) -> "MLPServiceClassifier":
        """Upload X and y, train through the service, wait for the model."""
        table, y = self._fit_inputs(X, y, y_numeric=False)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two classes in y; got one class: "
                             f"{self.classes_[0]!r}")
        # Labels travel as text, so that the service sees classes whatever their type; they come back mapped to
        # the fitted classes_.
        self._labels = {str(c): i for i, c in enumerate(self.classes_)}
        if len(self._labels) != len(self.classes_):
            raise ValueError("the classes of y are not told apart by their text (str); relabel them")
        self._train(table, pa.array([str(v) for v in y], type=pa.string()))
        return self

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Each class's probability, columns in the order of classes_."""
        rows = self._predict_records(X)
        out = np.zeros((len(rows), len(self.classes_)))
        for i, row in enumerate(rows):
            probabilities = row["probabilities"]
            if probabilities is None:  # a perceptron answers classes only
                out[i, self._labels[str(row["prediction"])]] = 1.0
                continue
            for label, p in probabilities.items():
                out[i, self._labels[label]] = p
        return out

    def predict(self, X: Any) -> NDArray[Any]:
        """The most probable class of each row (the service's answer), as a value of classes_."""
        rows = self._predict_records(X)
        return np.asarray(self.classes_[[self._labels[str(row["prediction"])] for row in rows]])


class MLPServiceRegressor(RegressorMixin, _MLPServiceEstimator):  # type: ignore[misc]
    """A regressor trained by an MLP Service (task 'regression', one numeric target); every parameter but url,
    api_key and timeout is a field of the job spec (None: the service's default for the model type)."""

    _task = "regression"

    def fit(self, X: Any, y: Any) -> "MLPServiceRegressor":
        """Upload X and y, train through the service, wait for the model."""
        table, y = self._fit_inputs(X, y, y_numeric=True)
        self._train(table, pa.array(y.astype(np.float64)))
        return self

    def predict(self, X: Any) -> NDArray[np.float64]:
        """The predicted value of each row."""
        return np.asarray([float(row["prediction"]) for row in self._predict_records(X)], dtype=np.float64)
