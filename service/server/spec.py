"""The stored job spec: one resolved, versioned type, written at submit and read by the queue and the runner.

Every default lives here, per model type; a submitted spec leaves out what it likes and the job stores the
resolved values, so a job's spec says exactly what trained it. Specs stored by earlier versions are read by
`read_spec`, which upgrades them explicitly.
"""

import math
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from service.schemas import JobCreate, ModelSpec, TrainingSpec

SPEC_VERSION: Final = 2

# Rows from which the ensemble stops cross-fitting and validates every member on one shared split.
CROSS_FIT_MAX_ROWS = 20_000

# The lecture's single networks keep their defaults exactly.
SINGLE_MODEL = {"hidden_layers": [64, 64], "activation": "relu", "dropout": 0.1, "batch_norm": False}
SINGLE_TRAINING = {"epochs": 300, "batch_size": 32, "optimizer": "adam", "learning_rate": 1e-3, "momentum": 0.9,
                   "nesterov": False, "weight_decay": 0.0, "validation_fraction": 0.2, "test_fraction": 0.0,
                   "seed": 0, "early_stopping_patience": 20, "early_stopping_metric": "val_loss"}
LOGISTIC_TRAINING = {**SINGLE_TRAINING, "optimizer": "lbfgs", "learning_rate": 1.0, "epochs": 100,
                     "early_stopping_patience": 10}
ENSEMBLE_MODEL = {"hidden_layers": [64, 64], "activation": "relu", "dropout": None, "batch_norm": False,
                  "linear_skip": True, "linear_members": None, "dropout_range": [0.0, 0.3]}
ENSEMBLE_TRAINING = {**SINGLE_TRAINING, "epochs": 200, "optimizer": "adamw", "learning_rate": None,
                     "weight_decay": None, "learning_rate_range": [2e-3, 2e-2], "weight_decay_range": [1e-5, 1e-2],
                     "early_stopping_patience": 16}
# Piecewise-linear inputs per numeric column: about 256 in all, 4 to 16 per column.
BIN_INPUTS, MIN_BINS, MAX_BINS = 256, 4, 16


class StoredSpec(BaseModel):
    """A job's spec with every default resolved (what the queue stores and the runner reads)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[2] = SPEC_VERSION
    dataset_id: str
    target: str | list[str] | None
    targets: list[str]
    features: list[str]
    # Each feature's kind and each date feature's layout as the job uses them (the data set's, or the job's
    # column_kinds); empty in specs stored before kinds were recorded.
    column_kinds: dict[str, str] = {}
    date_layouts: dict[str, str] = {}
    task: str
    model: ModelSpec
    training: TrainingSpec
    device: str = "auto"
    max_runtime_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


T = TypeVar("T")


def required(value: T | None, name: str) -> T:
    """A field of a resolved spec that resolution fills in for its model type (ModelSpec and TrainingSpec type
    every field optional, as a submitted spec may leave it out)."""
    if value is None:
        raise ValueError(f"the resolved job spec has no {name}")
    return value


def ensemble_shape(n_rows: int) -> tuple[int, int]:
    """(members, folds) of the default ensemble for a data set of n_rows."""
    return (16, 4) if n_rows < CROSS_FIT_MAX_ROWS else (8, 1)


def ensemble_batch_size(n_rows: int) -> int:
    """Four to eight steps an epoch on small data: a power of two from 32 to 1024."""
    return int(min(1024, max(32, 2 ** math.floor(math.log2(n_rows / 4))))) if n_rows >= 128 else 32


def single_batch_size(n_rows: int) -> int:
    """The lecture's 32 up to 32,768 rows; beyond, the power of two that keeps an epoch near 1,024 steps, at most
    1,024 (a 2.6-million-row set at 32 would take 80,000 steps, minutes, for one epoch)."""
    return int(min(1024, max(32, 2 ** math.ceil(math.log2(max(n_rows, 1) / 1024)))))


def ensemble_bins(n_numeric: int) -> int:
    return min(MAX_BINS, max(MIN_BINS, BIN_INPUTS // max(n_numeric, 1)))


def ensemble_integer_levels(n_numeric: int) -> int:
    """Most distinct values a whole-number column may have for one bin per value: its share of BIN_INPUTS (see
    features.Encoding.integer_levels)."""
    return BIN_INPUTS // max(n_numeric, 1)


def _fill(given: BaseModel, defaults: dict[str, Any]) -> dict[str, Any]:
    values = given.model_dump(mode="json")
    return {k: (defaults[k] if v is None and k in defaults else v) for k, v in values.items()}


def resolve_model(model: ModelSpec, *, n_rows: int, n_numeric: int = 0,
                  validation_fraction: float | None = None) -> ModelSpec:
    if model.type != "ensemble":
        values = _fill(model, SINGLE_MODEL)
        return ModelSpec(**{**values, "members": None, "folds": None, "linear_skip": None, "linear_members": None,
                            "dropout_range": None,
                            "bins": None})
    values = _fill(model, ENSEMBLE_MODEL)
    if values["bins"] is None:
        values["bins"] = ensemble_bins(n_numeric)
    if values["linear_members"] is None:
        # they live on the skip path
        values["linear_members"] = bool(values["linear_skip"])
    members, folds = ensemble_shape(n_rows)
    if values["folds"] is None:
        # a validation split asked for explicitly is the one every member validates on
        values["folds"] = 1 if validation_fraction else folds
    if values["members"] is None:
        # four hyperparameter settings, each cross-fitted over every fold; eight on one shared split
        values["members"] = members if values["folds"] == folds else (4 * values["folds"] if values["folds"] > 1
                                                                      else 8)
    if values["dropout"] is not None:
        values["dropout_range"] = [values["dropout"], values["dropout"]]
    return ModelSpec(**values)


def resolve_training(training: TrainingSpec, model: ModelSpec, *, n_rows: int) -> TrainingSpec:
    if model.type == "ensemble":
        values = _fill(training, ENSEMBLE_TRAINING)
        if training.batch_size is None:
            values["batch_size"] = ensemble_batch_size(n_rows)
        if training.validation_fraction is None and (model.folds or 1) > 1:
            values["validation_fraction"] = 0.0
        if values["learning_rate"] is not None:
            values["learning_rate_range"] = [values["learning_rate"]] * 2
        if values["weight_decay"] is not None:
            values["weight_decay_range"] = [values["weight_decay"]] * 2
        return TrainingSpec(**values)
    values = _fill(training, LOGISTIC_TRAINING if model.type == "logistic_regression" else SINGLE_TRAINING)
    if training.batch_size is None:
        values["batch_size"] = single_batch_size(n_rows)
    if model.type == "logistic_regression" and training.weight_decay is None:
        # L2 of 1/n on the weights (not the bias) in a mean loss is scikit-learn's LogisticRegression(C=1):
        # the same optimum, which full-batch L-BFGS reaches in a few steps.
        n_train = max(1, round(n_rows * (1 - values["validation_fraction"] - values["test_fraction"])))
        values["weight_decay"] = 1.0 / n_train
    return TrainingSpec(**{**values, "learning_rate_range": None, "weight_decay_range": None})


def resolve(spec: JobCreate, *, targets: list[str], features: list[str], task: str, n_rows: int,
            max_runtime_s: int, n_numeric: int = 0, column_kinds: dict[str, str] | None = None,
            date_layouts: dict[str, str] | None = None) -> StoredSpec:
    """The spec a job stores: every default of its model type filled in (`n_numeric`: numeric feature columns)."""
    model = resolve_model(spec.model, n_rows=n_rows, n_numeric=n_numeric,
                          validation_fraction=spec.training.validation_fraction)
    return StoredSpec(dataset_id=spec.dataset_id, target=spec.target, targets=targets, features=features, task=task,
                      column_kinds=column_kinds or {}, date_layouts=date_layouts or {},
                      model=model, training=resolve_training(spec.training, model, n_rows=n_rows),
                      device=spec.device, max_runtime_s=spec.max_runtime_s or max_runtime_s)


def read_spec(stored: dict[str, Any]) -> StoredSpec:
    """A stored spec of any version as today's type."""
    if stored.get("schema_version") == SPEC_VERSION:
        return StoredSpec.model_validate(stored)
    # Version 1 (no schema_version): every field was already filled with the single networks' defaults, which
    # are still SINGLE_MODEL / SINGLE_TRAINING; `targets` is missing from the earliest jobs.
    upgraded = dict(stored)
    upgraded["schema_version"] = SPEC_VERSION
    target = stored.get("target")
    upgraded.setdefault("targets", [target] if isinstance(target, str) else list(target or []))
    upgraded["model"] = {**SINGLE_MODEL, **(stored.get("model") or {})}
    upgraded["training"] = {**SINGLE_TRAINING, **(stored.get("training") or {})}
    return StoredSpec.model_validate(upgraded)
