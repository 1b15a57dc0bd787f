"""What a task and a model spec imply before any tensor exists: the network's output width and parameter count,
the metric names each task reports.

Free of torch, so that the API checks a job spec (and lists metrics) without loading it; `nets` builds the same
networks these figures describe, and a test compares the two.
"""

from typing import Any

# The figures each task computes per split, and those early stopping may monitor.
METRICS = {
    "classification": ["loss", "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                       "auroc", "log_loss"],
    "regression": ["loss", "mse", "rmse", "mae", "r2"],
    "autoencoder": ["loss"],
}
MONITORED = {
    "classification": ["loss", "accuracy", "balanced_accuracy", "f1_macro", "auroc"],
    "regression": ["loss", "rmse", "mae", "r2"],
    "autoencoder": ["loss"],
}


def metric_names(task: str, *, split: str = "val") -> list[str]:
    """The metrics early stopping can monitor for a task, as named in an epoch's row (e.g. val_accuracy)."""
    return [f"{split}_{name}" for name in MONITORED[task]]


def output_width(task: str, *, n_inputs: int, n_classes: int = 0, n_targets: int = 1) -> int:
    """How many outputs a network has: one logit for two classes, one per class beyond; one per regression target;
    an autoencoder reproduces its inputs."""
    if task == "classification":
        return 1 if n_classes == 2 else n_classes
    if task == "autoencoder":
        return n_inputs
    return n_targets


def _linear(sizes: list[int]) -> int:
    """Weights and biases of linear layers between consecutive sizes."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def parameter_count(model: Any, n_inputs: int, n_outputs: int) -> int:
    """The parameters of the network `nets.build_for` builds from a resolved model spec (anything with the
    ModelSpec fields): linear layers, batch norm's scale and shift per hidden unit, an ensemble's members."""
    hidden = [int(h) for h in (getattr(model, "hidden_layers", None) or [])]
    if model.type in ("logistic_regression", "perceptron"):
        return _linear([n_inputs, n_outputs])
    if model.type == "ensemble":
        skip = _linear([n_inputs, n_outputs]) if model.linear_skip else 0
        return int(model.members) * (_linear([n_inputs, *hidden, n_outputs]) + skip)
    norm = 2 if model.batch_norm else 0
    if model.type == "autoencoder":
        # encoder n_inputs → hidden (the bottleneck last), decoder mirrored; batch norm after all but each last layer
        encoder, decoder = [n_inputs, *hidden], [*reversed(hidden), n_inputs]
        return _linear(encoder) + _linear(decoder) + norm * (sum(encoder[1:-1]) + sum(decoder[1:-1]))
    if model.type != "mlp":
        raise ValueError(f"unknown model type {model.type!r}")
    return _linear([n_inputs, *hidden, n_outputs]) + norm * sum(hidden)
