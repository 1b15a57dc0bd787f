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


def test_linear_members_follow_linear_skip_and_an_older_ensemble_spec_trains_without_them():
    from service.schemas import ModelSpec
    from service.server.runner import ensemble_config
    from service.server.spec import StoredSpec, resolve_model

    assert resolve_model(ModelSpec(), n_rows=150).linear_members is True
    assert resolve_model(ModelSpec(linear_skip=False), n_rows=150).linear_members is False
    assert resolve_model(ModelSpec(linear_members=False), n_rows=150).linear_members is False
    assert resolve_model(ModelSpec(type="mlp"), n_rows=150).linear_members is None
    # a spec stored before the field existed (an ensemble job queued or checkpointed by an earlier version)
    model = resolve_model(ModelSpec(), n_rows=150).model_dump()
    del model["linear_members"]
    stored = {"dataset_id": "ds_1", "target": "y", "targets": ["y"], "features": ["a"], "task": "classification",
              "model": model, "training": {"epochs": 5, "batch_size": 8, "optimizer": "adamw",
                                           "learning_rate_range": [1e-3, 1e-2], "weight_decay_range": [0, 0],
                                           "early_stopping_patience": 3, "seed": 0}}
    old = StoredSpec.model_validate(stored)
    assert old.model.linear_members is None and ensemble_config(old).linear_members is False
