"""The ensemble's hand-derived training step against autograd: the same gradients, bit for bit, and the same
training run."""

import pytest
import torch

from service.training import ensemble as E
from service.training import streaming
from service.training.batched_step import BatchedStep
from service.training.ensemble import EnsembleConfig, MemberAdamW, row_losses, train_ensemble
from service.training.nets import ACTIVATIONS, EnsembleNet
from tests.training.test_ensemble import iris_prepared


class AutogradStep:
    """The step as the loop wrote it before: the network's forward pass and autograd's backward pass."""

    def __init__(self, net: EnsembleNet, activation: str, task: str, n_classes: int) -> None:
        self.net, self.task, self.n_classes = net, task, n_classes

    def __call__(self, x, y, mask, denom):
        out = self.net(x)
        per_member = (row_losses(out, y, self.task, self.n_classes) * mask).sum(1) / denom.clamp_min(1e-12)
        for p in self.net.parameters():
            if p.grad is not None:
                p.grad.zero_()
        per_member.sum().backward()
        return per_member.detach(), out.detach()


CASES = [("classification", 3, 3), ("classification", 2, 1), ("regression", 0, 1), ("regression", 0, 2)]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("task", "n_classes", "n_outputs"), CASES)
@pytest.mark.parametrize("hidden", [(), (6,), (5, 6)])
def test_gradients_equal_autograds_bit_for_bit(activation, task, n_classes, n_outputs, hidden):
    torch.manual_seed(0)
    net = EnsembleNet(7, n_outputs, 4, hidden, activation, linear_skip=True)
    net.dropout.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3]))
    with torch.no_grad():  # a non-zero skip path, so that its gradients are checked too
        net.skip.weight.normal_()
    MemberAdamW(list(net.parameters()), lr=torch.ones(4), weight_decay=torch.zeros(4))
    X = torch.randn(9, 7)
    y = torch.randint(0, n_classes, (9,)) if n_classes else torch.randn(9, n_outputs)
    mask = (torch.rand(4, 9) > 0.3).float()
    mask[2] = 0  # a member that trains on none of these rows
    denom = mask.sum(1)
    net.train()
    rng = torch.get_rng_state()
    loss_ref, out_ref = AutogradStep(net, activation, task, n_classes)(X, y, mask, denom)
    reference = [p.grad.clone() for p in net.parameters()]
    torch.set_rng_state(rng)  # the same dropout draws
    loss, out = BatchedStep(net, activation, task, n_classes)(X, y, mask, denom)
    assert torch.equal(loss, loss_ref) and torch.equal(out, out_ref)
    for (name, p), ref in zip(net.named_parameters(), reference, strict=True):
        assert torch.equal(p.grad, ref), name
    assert float(net.layers[0].weight.grad[2].abs().sum()) == 0.0
    assert float(net.layers[0].weight.grad[0].abs().sum()) > 0.0


def test_an_unknown_activation_is_refused_before_training():
    net = EnsembleNet(3, 1, 2, (4,), "relu")
    with pytest.raises(ValueError, match="softplus"):
        BatchedStep(net, "softplus", "regression", 0)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_whole_training_runs_equal_autograds(monkeypatch, activation):
    prepared = iris_prepared()
    cfg = EnsembleConfig(
        members=8,
        folds=4,
        hidden_layers=(16, 8),
        activation=activation,
        epochs=15,
        early_stopping_patience=5,
        batch_size=32,
        gradient_clip_norm=1.0,
    )
    fast = train_ensemble(prepared.data, cfg)
    monkeypatch.setattr(E, "BatchedStep", AutogradStep)
    slow = train_ensemble(prepared.data, cfg)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in fast.history]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in slow.history]
    for a, b in zip(fast.net.state_dict().values(), slow.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert streaming.BatchedStep is BatchedStep  # the streamed ensemble steps the same way


def test_member_adamw_keeps_parameters_and_gradients_as_views_of_its_buffers():
    net = EnsembleNet(3, 2, 4, (5,), "relu")
    before = [p.detach().clone() for p in net.parameters()]
    opt = MemberAdamW(list(net.parameters()), lr=torch.full((4,), 0.1), weight_decay=torch.zeros(4))
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, b) and p.is_contiguous() and p.grad is not None and p.grad.shape == p.shape
    net.layers[0].weight.grad.fill_(1.0)
    opt.step()
    assert not torch.equal(net.layers[0].weight, before[0])
    names = [name for name, _ in net.named_parameters()]
    assert torch.equal(net.layers[1].weight, before[names.index("layers.1.weight")])  # no gradient: it stays
    opt.zero_grad()
    assert all(float(p.grad.abs().sum()) == 0.0 for p in net.parameters())
