"""The stored job spec: versioned, with every default filled in; older rows are upgraded when read."""

from service.server.spec import SINGLE_TRAINING, read_spec


def test_a_job_spec_stored_before_versioning_reads_as_the_single_networks_defaults():
    v1 = {"dataset_id": "ds_1", "target": "species", "features": ["a", "b"], "task": "classification",
          "model": {"type": "mlp", "hidden_layers": [16], "activation": "tanh", "dropout": 0.0, "batch_norm": False},
          "training": {"epochs": 40, "batch_size": 8, "optimizer": "sgd", "learning_rate": 0.05},
          "device": "cpu", "max_runtime_s": 60}
    spec = read_spec(v1)
    assert spec.schema_version == 2 and spec.targets == ["species"]
    assert spec.model.hidden_layers == [16] and spec.model.activation == "tanh"
    assert spec.training.epochs == 40 and spec.training.optimizer == "sgd"
    assert spec.training.early_stopping_patience == SINGLE_TRAINING["early_stopping_patience"]
