"""Request and response models. Inputs forbid unknown fields; every number has explicit bounds."""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear", "threshold"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---------------------------------------------------------------- datasets


ColumnKind = Literal["numeric", "categorical", "boolean", "datetime", "text", "identifier", "tensor"]
# The kinds a user may give a column (PATCH /datasets/{id}, a job's column_kinds); tensor is an .npz array's own.
SettableKind = Literal["numeric", "categorical", "boolean", "datetime", "text", "identifier"]


class ColumnRead(BaseModel):
    name: str
    kind: ColumnKind = Field(description="How the column is used: numeric, categorical (one-hot), boolean, "
                                         "datetime (calendar features), text and identifier (left out unless a "
                                         "job lists them), tensor (.npz)")
    reason: str | None = Field(default=None, description="Why the column has its kind, e.g. 'identifier: 1168 "
                                                         "distinct values in 1168 rows'")
    inferred_kind: ColumnKind | None = Field(default=None, description="The kind inference gave, where the user "
                                                                       "has set another")
    datetime_layout: str | None = Field(default=None, description="How a datetime column writes its dates: iso, "
                                                                  "ymd_slash, mdy, dmy, d_mon_y or mon_d_y")
    dtype: str
    shape: list[int] | None = Field(default=None, description="Per-record shape of an array column (.npz)")
    n_missing: int
    n_unique: int
    stats: dict[str, Any]


class DataWarning(BaseModel):
    code: str = Field(description="Stable code, e.g. identifier_column, rare_class (the README lists them)")
    column: str | None = Field(default=None, description="The column it is about, if one")
    message: str


class Dialect(BaseModel):
    format: str
    delimiter: str
    decimal: str = Field(description="The decimal point of the file's numbers: '.' or ','")
    encoding: str = Field(description="The text encoding the file was read with")
    quoted_newlines: bool = Field(description="Whether quoted fields hold line breaks")
    thousands_separator: list[str] | None = Field(description="Digit-group separators read in numbers, if any")
    missing_values: list[str] = Field(description="The cell values read as missing")


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
    warnings: list[DataWarning] = Field(default_factory=list, description="What the service noticed about the "
                                                                         "columns (the README lists the codes)")
    dialect: Dialect | None = Field(default=None, description="How a CSV/TSV file was read")

    @field_validator("warnings", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class DatasetUpdate(_Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"column_kinds": {"customer_id": "categorical", "joined": "datetime"}}]})

    name: str | None = Field(default=None, min_length=1, max_length=255)
    column_kinds: dict[Annotated[str, Field(min_length=1, max_length=1024)], SettableKind] | None = Field(
        default=None, max_length=10_000, description="Kinds to set, by column name (see ColumnRead.kind)")


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
    linear_members: bool | None = Field(
        default=None, description="Ensemble: also fit L2-regularised linear models (ridge / logistic regression, "
                                  "five strengths, one per fold) that selection may choose beside the MLP members "
                                  "(default true; needs linear_skip)")
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
                                   description="Default 32 (beyond 32 768 rows, the power of two near rows/1024, at "
                                               "most 1024); the ensemble's: the power of two at or below rows/4, from "
                                               "32 to 1024")
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
        description="Input columns; null means every column but the target and those of kind identifier or text "
                    "(and constant or empty ones)")
    column_kinds: dict[Annotated[str, Field(min_length=1, max_length=1024)], SettableKind] | None = Field(
        default=None, max_length=10_000, description="Kinds for this job, by column name, over the data set's")
    task: Literal["auto", "classification", "regression"] = "auto"
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d{1,2}|mps)$",
                        description="auto, cpu, cuda, cuda:N or mps")
    max_runtime_s: int | None = Field(default=None, ge=1, le=30 * 24 * 3600,
                                      description="Fail the job once it has trained this many seconds")


class Progress(BaseModel):
    epoch: int = Field(description="Epochs finished")
    epochs: int
    # The epoch in progress (epoch + 1), once it has run a few seconds: a long epoch's steps, rate and time left.
    step: int | None = Field(default=None, description="Steps done in the epoch in progress (shown once that "
                                                       "epoch has run a few seconds)")
    steps: int | None = Field(default=None, description="Steps in the epoch in progress")
    samples_per_second: float | None = Field(default=None, description="Training rows per second in that epoch")
    eta_s: float | None = Field(default=None, description="Seconds left in that epoch at that rate")

    @classmethod
    def of(cls, epoch: int, epochs: int, step_progress: dict[str, Any] | None) -> "Progress":
        """A job's progress from its row: the epoch in progress's steps only while they are that epoch's."""
        steps = step_progress if step_progress and step_progress.get("epoch") == epoch + 1 else {}
        return cls(epoch=epoch, epochs=epochs, **{k: v for k, v in steps.items() if k != "epoch"})


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
    warnings: list[DataWarning] = Field(default_factory=list, description="What the checks at submit found")
    result: dict[str, Any] | None
    metrics: dict[str, Any] | None = Field(default=None, description="The kept model's figures once the job "
                                                                     "succeeded (not the last epoch's)")
    model_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None = None
    search_id: str | None = Field(default=None, description="The search this job is a trial of")
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    notes: str | None = None


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


Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                           description="Letters, digits and . _ : - (at most 64, starting with a letter or digit)")]
Name = Annotated[str, Field(min_length=1, max_length=255)]
Notes = Annotated[str, Field(max_length=10_000)]


class LabelsUpdate(_Input):
    """PATCH body of a job or a search: the fields given replace the stored ones (null clears a name or notes)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"name": "baseline", "tags": ["iris", "v1"], "notes": "the default spec"}]})

    name: Name | None = None
    tags: list[Tag] | None = Field(default=None, max_length=32, description="Replaces every tag")
    notes: Notes | None = None


class ComparedJob(BaseModel):
    id: str
    name: str | None
    status: str
    search_id: str | None
    epochs_run: int
    metrics: dict[str, Any] | None = Field(description="The kept model's figures once the job succeeded, else its "
                                                       "latest epoch's")


class MetricHistory(BaseModel):
    metric: str
    epochs: list[int] = Field(description="Every epoch any of the jobs ran, in order")
    values: dict[str, list[float | None]] = Field(description="Per job id, the metric at each of `epochs` (null "
                                                              "where the job has no such epoch)")


class SpecDifference(BaseModel):
    field: str = Field(description="Dotted path in the resolved spec, e.g. training.learning_rate")
    values: dict[str, Any] = Field(description="Per job id, its value there")


class JobComparison(BaseModel):
    jobs: list[ComparedJob]
    histories: list[MetricHistory] = Field(description="Per-epoch metrics of the jobs, aligned on epoch numbers")
    differences: list[SpecDifference] = Field(description="The spec fields whose values are not the same in every "
                                                          "job")


# ---------------------------------------------------------------- searches


class ChoiceParam(_Input):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1, max_length=256,
                              description="The values to try, e.g. layer lists [[64], [64, 64]]")


class FloatParam(_Input):
    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = Field(default=False, description="Sample log-uniformly (low must be above 0)")


class IntParam(_Input):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1, le=1_000_000)


SearchParam = Annotated[ChoiceParam | FloatParam | IntParam, Field(discriminator="type")]
SpecPath = Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z_]+)?$", max_length=64)]


class SearchBudget(_Input):
    trials: int | None = Field(default=None, ge=1, le=1000, description="Trials to run (a grid: at most its size)")
    max_wall_s: int | None = Field(default=None, ge=1, le=30 * 24 * 3600,
                                   description="Stop after this many seconds: queued trials are cancelled, "
                                               "running ones stopped")


class PrunerSpec(_Input):
    type: Literal["median", "successive_halving"]
    warmup_epochs: int = Field(default=5, ge=0, le=100_000,
                               description="median: epochs before a trial can be pruned; successive_halving: the "
                                           "first rung's epoch")
    startup_trials: int = Field(default=4, ge=0, le=1000, description="median: completed trials before any pruning")
    reduction_factor: int = Field(default=3, ge=2, le=16, description="successive_halving: 1/n of the trials go on "
                                                                      "at each rung")


class SearchCreate(_Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "spec": {"dataset_id": "ds_0123456789abcdef", "target": "species", "model": {"type": "mlp"}},
            "space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                      "model.hidden_layers": {"type": "choice", "values": [[32], [64, 64]]}},
            "sampler": "tpe", "budget": {"trials": 20}, "metric": "val_accuracy"}]},
    )

    spec: JobCreate = Field(description="The base job spec every trial starts from")
    space: dict[SpecPath, SearchParam] = Field(min_length=1, max_length=32,
                                               description="Spec field (dotted, e.g. training.learning_rate) -> its "
                                                           "values or range")
    sampler: Literal["grid", "random", "tpe"] = Field(default="tpe", description="grid: every combination of "
                                                      "choices; random; tpe: Optuna's tree-structured Parzen "
                                                      "estimator")
    budget: SearchBudget = Field(default_factory=SearchBudget)
    metric: str = Field(default="val_loss", max_length=64, description="A validation metric of the task, from the "
                                                                       "kept model's figures")
    direction: Literal["minimize", "maximize"] | None = Field(
        default=None, description="Default: minimize for val_loss, val_rmse and val_mae, else maximize")
    pruner: PrunerSpec | None = Field(default=None, description="Stop poor trials early on their per-epoch metric")
    parallelism: int = Field(default=4, ge=1, le=256, description="Trials queued or running at once")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    refit: bool = Field(default=False, description="Once the search ends, train the best trial's configuration "
                                                   "again on all rows (no validation or test split; a single "
                                                   "network for the epochs the best trial kept): the job "
                                                   "'<name> refit'")
    name: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    notes: Notes | None = None


class TrialRead(BaseModel):
    number: int
    state: Literal["running", "complete", "pruned", "failed", "cancelled"]
    params: dict[str, Any]
    value: float | None = Field(description="The metric: the kept model's (complete) or the last epoch's (pruned)")
    job_id: str | None
    job_status: str | None
    epochs: int = Field(description="Epochs the trial's job ran")
    duration_s: float | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class SearchProgress(BaseModel):
    trials_done: int = Field(description="Trials that ended (complete, pruned, failed or cancelled)")
    trials_running: int
    trials_budget: int | None = Field(description="Null when only the wall time bounds the search")
    elapsed_s: float
    max_wall_s: int | None


class SearchRead(BaseModel):
    id: str
    status: Literal["running", "succeeded", "failed", "cancelled"]
    name: str | None
    tags: list[str]
    notes: str | None
    dataset_id: str | None
    task: str
    sampler: str
    metric: str
    direction: Literal["minimize", "maximize"]
    spec: dict[str, Any] = Field(description="The request: base spec, space, budget, pruner, parallelism, seed")
    progress: SearchProgress
    best: TrialRead | None = Field(description="The best complete trial so far")
    model_id: str | None = Field(description="The best trial's model")
    refit_job_id: str | None = Field(default=None, description="With refit: the job training the best "
                                                               "configuration on all rows")
    refit_model_id: str | None = Field(default=None, description="Its model, once it succeeded")
    leaderboard: list[TrialRead] | None = Field(
        default=None, description="Trials with a metric, best first (complete ones, then pruned); GET "
                                  "/searches/{id} only")
    error: str | None
    created_at: datetime
    finished_at: datetime | None


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

    model_id: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="The model's id (or a registry reference, as in 'model'); send "
                                             "model_id or model")
    model: str | None = Field(default=None, min_length=1, max_length=200,
                              description="The model as the registry names it: 'name@alias' (iris@production) or "
                                          "'name:version' (iris:3); an id works too",
                              examples=["iris@production"])
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


# ---------------------------------------------------------------- the model registry

REGISTRY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class RegisterModel(_Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model_id": "mdl_0123456789abcdef"}]})

    model_id: str = Field(min_length=1, max_length=64, description="The trained model to register as the next "
                                                                    "version of the name")


class ModelVersionRead(BaseModel):
    name: str
    version: int = Field(description="Numbered 1, 2, ... per name; a number is never reused")
    model_id: str
    aliases: list[str] = Field(description="The aliases that point at this version now")
    registered_by: str = Field(description="The owner of the key that registered it")
    registered_at: datetime


class RegisteredModelRead(BaseModel):
    name: str
    owner: str
    latest_version: int | None = Field(description="The newest version still present (null when every version's "
                                                    "model was deleted)")
    versions: int = Field(description="How many versions are present")
    aliases: dict[str, int] = Field(description="alias -> the version it points at")
    created_at: datetime
    updated_at: datetime


class AliasMoveRequest(_Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 3}]})

    version: int = Field(ge=1, le=10**9, description="The version the alias is to point at")
    expected_version: int | None = Field(
        default=None, ge=0, le=10**9,
        description="Move only if the alias points at this version now (0: only if it does not exist yet); "
                    "otherwise 409 naming the version it points at. Without it the move always happens")


class AliasRead(BaseModel):
    name: str
    alias: str
    version: int
    model_id: str
    previous_version: int | None = Field(description="The version the alias pointed at before its last move (null "
                                                      "when that move created it)")
    moved_by: str = Field(description="The owner of the key that moved it last")
    moved_at: datetime


class AliasMoveRead(BaseModel):
    alias: str
    from_version: int | None = Field(description="null: the move created the alias")
    to_version: int | None = Field(description="null: the move removed the alias")
    model_id: str | None = Field(description="The model the alias pointed at after the move")
    moved_by: str = Field(description="The owner of the key that moved it")
    key_id: str = Field(description="The id of that key")
    moved_at: datetime



# ---------------------------------------------------------------- webhooks

WebhookEventType = Literal["job.succeeded", "job.failed", "job.cancelled", "search.finished"]
WEBHOOK_EVENT_TYPES: tuple[str, ...] = ("job.succeeded", "job.failed", "job.cancelled", "search.finished")
WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048, description="Where deliveries are POSTed: https "
                                  "(plain http only to a host the operator allows in MLPS_WEBHOOK_ALLOW)",
                                  examples=["https://hooks.example.com/mlps"])]
WebhookEvents = Annotated[list[WebhookEventType], Field(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES),
                                                        description="The event types to deliver")]


class WebhookCreate(_Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"url": "https://hooks.example.com/mlps", "events": ["job.succeeded", "job.failed"]}]})

    url: WebhookUrl
    events: WebhookEvents
    description: str | None = Field(default=None, max_length=255)


class WebhookUpdate(_Input):
    """PATCH body of a webhook: the fields given replace the stored ones."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})

    url: WebhookUrl | None = None
    events: WebhookEvents | None = None
    description: str | None = Field(default=None, max_length=255)
    enabled: bool | None = Field(default=None, description="false stops deliveries: no new events are queued for "
                                                           "it and its pending ones end failed, unsent, when next "
                                                           "due; true resumes, also after a receiver answered 410 "
                                                           "Gone")


class WebhookRead(_Output):
    id: str
    owner: str
    url: str
    events: list[WebhookEventType]
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why deliveries stopped, when the server disabled the "
                                                    "endpoint (its receiver answered 410 Gone)")
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="The signing secret (Standard Webhooks: whsec_ + base64), shown only in this "
                                    "answer", examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class WebhookAttempt(BaseModel):
    attempt: int = Field(description="1 for the first try")
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came")
    error: str | None = Field(description="Why the attempt failed: the status, a refused address, a timeout")
    duration_ms: float


class WebhookDeliveryRead(BaseModel):
    id: int
    event_id: str = Field(description="The webhook-id header: the same on every attempt")
    type: str = Field(description="The event type (also webhook.test)")
    state: Literal["pending", "delivered", "failed"]
    attempt_count: int
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending only)")
    created_at: datetime
    finished_at: datetime | None


class WebhookJobData(BaseModel):
    """A job.* event's data: the job as GET /jobs/{id} names it, with the kept model's figures."""

    id: str
    status: Literal["succeeded", "failed", "cancelled"]
    name: str | None
    dataset_id: str | None
    search_id: str | None
    model_id: str | None
    metrics: dict[str, Any] | None = Field(description="The kept model's figures (succeeded), else the last "
                                                       "epoch's")
    error: str | None
    finished_at: datetime | None


class WebhookSearchData(BaseModel):
    """A search.finished event's data."""

    id: str
    status: Literal["succeeded", "failed", "cancelled"]
    name: str | None
    best: TrialRead | None
    model_id: str | None = Field(description="The best trial's model")
    refit_job_id: str | None
    error: str | None
    finished_at: datetime | None


class WebhookTestData(BaseModel):
    """A webhook.test event's data (POST /webhooks/{id}/test)."""

    webhook_id: str
    message: str


class WebhookPayload(BaseModel):
    """The body of every delivery (signed as Standard Webhooks says)."""

    type: str = Field(examples=["job.succeeded"])
    timestamp: datetime = Field(description="When the event happened")
    data: WebhookJobData | WebhookSearchData | WebhookTestData

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
