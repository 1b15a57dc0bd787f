"""Request and response models. Inputs forbid unknown fields; every number has explicit bounds."""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear", "threshold"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---------------------------------------------------------------- datasets


class ColumnRead(BaseModel):
    name: str
    kind: Literal["numeric", "categorical", "boolean", "tensor"]
    dtype: str
    shape: list[int] | None = Field(default=None, description="Per-record shape of an array column (.npz)")
    n_missing: int
    n_unique: int
    stats: dict[str, Any]


class DatasetRead(_Output):
    id: str
    name: str
    format: str
    n_rows: int
    n_columns: int
    columns: list[ColumnRead]
    size_bytes: int
    sha256: str
    created_at: datetime


class DatasetPreview(BaseModel):
    dataset_id: str
    columns: list[str]
    rows: list[dict[str, Any]]


# ---------------------------------------------------------------- jobs


Range = Annotated[list[Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)]],
                  Field(min_length=2, max_length=2, description="[low, high]; equal ends fix the value")]


class ModelSpec(_Input):
    """Fields left out (null) take the default of the model type; the job stores the resolved values."""

    type: Literal["ensemble", "mlp", "logistic_regression", "perceptron", "autoencoder"] = Field(
        default="ensemble",
        description="ensemble (the default): member MLPs trained as one batched network, cross-fitted and selected "
                    "on out-of-fold predictions; mlp: one network with hidden layers; logistic_regression: one "
                    "sigmoid/softmax layer; perceptron: Rosenblatt's rule (binary targets); autoencoder: no target, "
                    "hidden_layers end at the bottleneck")
    hidden_layers: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(
        default=None, max_length=32,
        description="Width of each hidden layer (ensemble members, mlp, autoencoder); default [64, 64]")
    activation: Activation | None = Field(
        default=None, description="Default relu. threshold is the perceptron's unit; it has no gradient, so other "
                                  "models cannot be trained with it")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0, allow_inf_nan=False,
                                  description="Default 0.1; for the ensemble, fixes every member's rate")
    batch_norm: bool | None = Field(default=None, description="Default false; not available for the ensemble")
    members: int | None = Field(default=None, ge=1, le=256,
                                description="Ensemble: member networks (a multiple of folds); default 16 below "
                                            "20 000 rows, else 8")
    folds: int | None = Field(default=None, ge=1, le=32,
                              description="Ensemble: cross-fitting folds, each member holding one out for its early "
                                          "stopping; 1 validates every member on one shared split; default 4 below "
                                          "20 000 rows, else 1")
    linear_skip: bool | None = Field(default=None, description="Ensemble: a linear path from inputs to outputs in "
                                                               "every member (default true)")
    dropout_range: Range | None = Field(default=None, description="Ensemble: members' dropout rates are spread over "
                                                                  "this range (default [0, 0.3])")
    bins: int | None = Field(default=None, ge=0, le=64,
                             description="Ensemble: piecewise-linear quantile bins per numeric column, inputs beside "
                                         "its standardised value (default 256 / numeric columns, from 4 to 16; 0: "
                                         "none)")


class StepSchedule(_Input):
    type: Literal["step"]
    step_size: int = Field(default=30, ge=1, le=100_000, description="Epochs between decays")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, allow_inf_nan=False)


class CosineSchedule(_Input):
    type: Literal["cosine"]
    min_lr: float = Field(default=0.0, ge=0.0, le=10.0, allow_inf_nan=False)


class PlateauSchedule(_Input):
    type: Literal["plateau"]
    factor: float = Field(default=0.1, gt=0.0, lt=1.0, allow_inf_nan=False)
    patience: int = Field(default=10, ge=0, le=100_000)
    min_lr: float = Field(default=0.0, ge=0.0, le=10.0, allow_inf_nan=False)


LRSchedule = Annotated[StepSchedule | CosineSchedule | PlateauSchedule, Field(discriminator="type")]
ClassWeight = Annotated[float, Field(gt=0.0, le=1e6, allow_inf_nan=False)]


class TrainingSpec(_Input):
    """Fields left out (null) take the default of the model type; the job stores the resolved values."""

    epochs: int | None = Field(default=None, ge=1, le=100_000,
                               description="Upper bound; early stopping usually ends sooner (default 300; ensemble "
                                           "200; logistic_regression 100 L-BFGS steps)")
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000,
                                   description="Default 32; the ensemble's grows with the data (n/8, a power of two "
                                               "from 32 to 512)")
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop", "lbfgs"] | None = Field(
        default=None, description="Default adam; logistic_regression: lbfgs (full batch); the ensemble trains with "
                                  "AdamW, one learning rate and weight decay per member")
    learning_rate: float | None = Field(default=None, gt=0.0, le=10.0, allow_inf_nan=False,
                                        description="Default 0.001 (lbfgs: 1); for the ensemble, fixes every "
                                                    "member's rate")
    learning_rate_range: Range | None = Field(default=None, description="Ensemble: members' learning rates are "
                                                                        "spread log-uniformly over this range "
                                                                        "(default [0.001, 0.01])")
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0, allow_inf_nan=False, description="Default 0.9")
    nesterov: bool | None = None
    weight_decay: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False,
                                       description="Default 0; for the ensemble, fixes every member's decay")
    weight_decay_range: Range | None = Field(default=None, description="Ensemble: members' weight decays are spread "
                                                                       "log-uniformly over this range "
                                                                       "(default [1e-5, 0.01])")
    gradient_clip_norm: float | None = Field(default=None, gt=0.0, le=1e6, allow_inf_nan=False)
    lr_schedule: LRSchedule | None = None
    class_weights: Literal["balanced"] | dict[str, ClassWeight] | None = Field(
        default=None, description="'balanced' or {label: weight} (classification)")
    validation_fraction: float | None = Field(
        default=None, ge=0.0, le=0.5, allow_inf_nan=False,
        description="Default 0.2; a cross-fitted ensemble validates on its folds instead (0)")
    test_fraction: float | None = Field(default=None, ge=0.0, le=0.5, allow_inf_nan=False,
                                        description="Held out and evaluated once on the final model (default 0)")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Default 0")
    early_stopping_patience: int | None = Field(
        default=None, ge=0, le=100_000,
        description="Stop after this many epochs without improvement of early_stopping_metric and keep the "
                    "best epoch's weights; 0 trains every epoch and keeps the last (default 20; ensemble: 16, "
                    "per member on its own held-out loss)")
    early_stopping_metric: Literal[
        "val_loss", "val_accuracy", "val_balanced_accuracy", "val_f1_macro", "val_auroc", "val_rmse", "val_mae",
        "val_r2"] | None = Field(default=None, description="Default val_loss")


class JobCreate(_Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset_id": "ds_0123456789abcdef", "target": "species"}]},
    )

    dataset_id: str = Field(min_length=1, max_length=64)
    target: Annotated[str, Field(min_length=1, max_length=1024)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Column to predict (a list of numeric columns for multi-target regression; "
                                  "null for an autoencoder)")
    features: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None, min_length=1, max_length=10_000,
        description="Input columns; null means every column but the target")
    task: Literal["auto", "classification", "regression"] = "auto"
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d{1,2}|mps)$",
                        description="auto, cpu, cuda, cuda:N or mps")
    max_runtime_s: int | None = Field(default=None, ge=1, le=30 * 24 * 3600,
                                      description="Fail the job once it has trained this many seconds")


class Progress(BaseModel):
    epoch: int
    epochs: int


class JobRead(_Output):
    id: str
    status: str
    dataset_id: str | None
    task: str
    spec: dict[str, Any]
    progress: Progress
    latest_metrics: dict[str, Any] | None
    device_request: str
    device: str | None
    attempts: int
    cancel_requested: bool
    waiting_for: str | None = None
    error: str | None
    result: dict[str, Any] | None
    metrics: dict[str, Any] | None = Field(default=None, description="The kept model's figures once the job "
                                                                     "succeeded (not the last epoch's)")
    model_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None = None


class EpochMetricsRead(BaseModel):
    epoch: int
    metrics: dict[str, Any]


class TargetPredictions(BaseModel):
    target: str = Field(description="The target column")
    actual: list[float] = Field(description="The sampled rows' values, in the target's units")
    predicted: list[float] = Field(description="The model's predictions for the same rows, in the same order")


class RocCurve(BaseModel):
    label: str = Field(description="The positive class (binary: the second label; else each class against the rest)")
    fpr: list[float] = Field(description="False-positive rates, from 0 to 1; empty when the rows lack the class or "
                                         "hold nothing else")
    tpr: list[float] = Field(description="True-positive rates at the same thresholds")
    auc: float | None = Field(description="Area under the whole curve (before thinning); null when undefined")


class ClassFigures(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int = Field(description="Rows of this class")


class JobReport(BaseModel):
    """What the plots draw, computed once on the rows the job's headline metrics come from."""

    split: Literal["test", "validation", "out-of-fold"]
    n_rows: int = Field(description="Rows of the split")
    predictions: list[TargetPredictions] | None = Field(
        description="Regression, per target: actual and predicted values of the split's rows (every row up to "
                    "1,000, else 1,000 evenly spaced ones); null for classifiers")
    roc: list[RocCurve] | None = Field(description="Classification: ROC curves of at most 200 points; null for "
                                                   "regression")
    classes: list[ClassFigures] | None = Field(description="Classification: per-class figures, in label order; null "
                                                           "for regression")


class JobMetrics(BaseModel):
    job_id: str
    task: str
    epochs: list[EpochMetricsRead]
    test: dict[str, Any] | None = Field(default=None, description="Held-out test split, evaluated once")
    confusion_matrix: dict[str, Any] | None = None
    report: JobReport | None = Field(
        default=None, description="Held-out predictions, or ROC curves and per-class figures, once the job succeeded; "
                                  "null before, for an autoencoder, when no rows were held out, and for jobs that "
                                  "finished before the service reported them")


# ---------------------------------------------------------------- models and predict


class ModelRead(_Output):
    id: str
    job_id: str | None
    dataset_id: str | None
    model_type: str
    task: str
    target: str | None
    features: list[dict[str, Any]]
    labels: list[Any] | None
    metrics: dict[str, Any]
    size_bytes: int
    created_at: datetime


class PredictRequest(_Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model_id": "mdl_0123456789abcdef", "records": [
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}]},
    )

    model_id: str = Field(min_length=1, max_length=64)
    records: list[dict[str, Any]] | None = Field(default=None, min_length=1,
                                                 description="One object per row, keyed by column name")
    inputs: list[Any] | None = Field(default=None, min_length=1,
                                     description="Array models: one nested array per record, shaped like X")
    uncertainty: bool = Field(default=False, description="Ensembles: also return how much the members disagree "
                                                         "on each record")


class EmbedRequest(_Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"records": [
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}]},
    )

    records: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    inputs: list[Any] | None = Field(default=None, min_length=1)


class EmbedResponse(BaseModel):
    model_id: str
    embeddings: list[list[float]]


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None
    uncertainty: list[dict[str, Any]] | None = Field(
        default=None, description="With uncertainty: true, per record: classification {std: the members' standard "
                                  "deviation of the predicted class's probability, disagreement: the weight of "
                                  "members whose own answer differs}; regression {std: the members' standard "
                                  "deviation, in the target's units (one per target for several)}")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
