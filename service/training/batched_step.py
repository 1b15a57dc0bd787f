"""One training step of an EnsembleNet with its gradients worked out by hand.

A step of the default ensemble on a small table is a few hundred tiny tensor operations, and on the CPU most of
its time went to autograd's bookkeeping around them (recording the graph, saving and detaching tensors,
accumulating into each parameter's gradient), not to arithmetic. `BatchedStep` runs the same forward pass and
then the backward pass autograd would run, operation for operation (the same aten backward kernels on the same
operands, so the same gradients bit for bit), writing each gradient straight into the optimizer's buffer.
`tests/training/test_batched_step.py` holds it to autograd's gradients and to autograd's whole training run.
"""

from typing import Any, cast

import torch
from torch.nn import functional as F

from service.training.nets import BatchedLinear, EnsembleNet

_aten: Any = torch.ops.aten


BACKWARD_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear")


def _activation_backward(name: str, grad: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """d loss / d z from d loss / d a, where a = activation(z): the kernels autograd uses for each."""
    match name:
        case "relu":
            return cast(torch.Tensor, _aten.threshold_backward(grad, a, 0))
        case "leaky_relu":
            return cast(torch.Tensor, _aten.leaky_relu_backward(grad, z, 0.01, False))
        case "tanh":
            return cast(torch.Tensor, _aten.tanh_backward(grad, a))
        case "sigmoid":
            return cast(torch.Tensor, _aten.sigmoid_backward(grad, a))
        case "gelu":
            return cast(torch.Tensor, _aten.gelu_backward(grad, z, approximate="none"))
        case "linear":
            return grad
    raise ValueError(f"no backward pass for activation {name!r}")


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None  # BatchedStep.__call__ gives every parameter one first
    return p.grad


class BatchedStep:
    """Forward and backward of `net` on one minibatch; the gradients land in each parameter's `.grad`."""

    def __init__(self, net: EnsembleNet, activation: str, task: str, n_classes: int) -> None:
        if activation not in BACKWARD_ACTIVATIONS:
            raise ValueError(f"no backward pass for activation {activation!r}")
        self.net, self.activation, self.task, self.n_classes = net, activation, task, n_classes
        # Autograd's mm backward takes a column-major weight's gradient the other way round (a member with one
        # output flattens to one); the weights keep their strides while training, so this is decided once.
        self._column_major: dict[int, bool] = {}
        for layer in [cast(BatchedLinear, net.layers[0]), *([net.skip] if net.skip is not None else [])]:
            k, fan_in, fan_out = layer.weight.shape
            flat = layer.weight.transpose(0, 1).reshape(fan_in, k * fan_out)
            self._column_major[id(layer)] = flat.stride(0) == 1 and flat.stride(1) == fan_in

    @staticmethod
    def _shared_input(layer: BatchedLinear, x: torch.Tensor) -> torch.Tensor:
        """BatchedLinear.forward of a [B, in] input: [K, B, out]."""
        k, fan_in, fan_out = layer.weight.shape
        flat = layer.weight.transpose(0, 1).reshape(fan_in, k * fan_out)
        return (x @ flat).view(len(x), k, fan_out).transpose(0, 1) + layer.bias

    def _shared_input_backward(self, layer: BatchedLinear, x: torch.Tensor, grad: torch.Tensor) -> None:
        k, fan_in, fan_out = layer.weight.shape
        _grad(layer.bias).copy_(grad.sum(1, keepdim=True))
        g = grad.transpose(0, 1).reshape(len(x), k * fan_out)
        wgrad = g.t().mm(x).t() if self._column_major[id(layer)] else x.t().mm(g)
        _grad(layer.weight).copy_(wgrad.view(fan_in, k, fan_out).transpose(0, 1))

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(each member's mean loss over its masked rows [K], the members' outputs [K, B, o]) for rows x, targets
        y, per-member row weights `mask` [K, B] and their sums `denom` [K], as
        `(row_losses(net(x), y) * mask).sum(1) / denom.clamp_min(1e-12)` computes them; afterwards every
        parameter's `.grad` holds the gradient of the members' summed losses (what `.backward()` of that sum
        leaves there, starting from no gradient)."""
        net = self.net
        for param in net.parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        layers = [cast(BatchedLinear, layer) for layer in net.layers]
        last = len(layers) - 1
        p = net.dropout.view(-1, 1, 1) if net.training and bool((net.dropout > 0).any()) else None
        kept = 1 - p if p is not None else None
        inputs: list[torch.Tensor] = []  # each layer's input
        hidden: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (z, activation(z), kept units)
        h = x
        for i, layer in enumerate(layers):
            inputs.append(h)
            z = self._shared_input(layer, h) if h.dim() == 2 else torch.baddbmm(layer.bias, h, layer.weight)
            if i < last:
                a = net.activation(z)
                drop = torch.rand_like(a) >= p if p is not None else None
                h = a * drop / kept if drop is not None and kept is not None else a
                hidden.append((z, a, drop))
            else:
                h = z
        out = h
        skip = net.skip
        if skip is not None:
            out = out + self._shared_input(skip, x)
        losses, grad_out = self._loss(out, y, mask, denom.clamp_min(1e-12))
        grad = grad_out
        if skip is not None:
            self._shared_input_backward(skip, x, grad)
        for i in range(last, -1, -1):
            layer, inp = layers[i], inputs[i]
            if inp.dim() == 2:
                self._shared_input_backward(layer, inp, grad)
                break
            _grad(layer.bias).copy_(grad.sum(1, keepdim=True))
            torch.bmm(inp.transpose(1, 2), grad, out=_grad(layer.weight))
            grad = grad.bmm(layer.weight.transpose(1, 2))
            z, a, drop = hidden[i - 1]
            if drop is not None and kept is not None:
                grad = grad / kept * drop
            grad = _activation_backward(self.activation, grad, z, a)
        return losses, out

    def _loss(
        self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-member loss [K], its sum's gradient with respect to out) as `(row_losses(out, y) * mask).sum(1) /
        denom` and autograd give them."""
        k, b = out.shape[:2]
        grad_rows = (torch.ones_like(denom) / denom).unsqueeze(1).expand(k, b) * mask
        if self.task == "classification" and self.n_classes == 2:
            target = y.to(out.dtype).expand(k, b)
            rows = F.binary_cross_entropy_with_logits(out[..., 0], target, reduction="none")
            grad_out = (grad_rows * (torch.sigmoid(out[..., 0]) - target)).unsqueeze(-1)
        elif self.task == "classification":
            logp = torch.log_softmax(out.reshape(k * b, -1), 1)
            targets = y.repeat(k)
            total_weight = torch.zeros((), dtype=out.dtype, device=out.device)
            rows = _aten.nll_loss_forward(logp, targets, None, 0, -100)[0].view(k, b)
            g = _aten.nll_loss_backward(grad_rows.reshape(k * b), logp, targets, None, 0, -100, total_weight)
            grad_out = _aten._log_softmax_backward_data(g, logp, 1, out.dtype).view(k, b, -1)
        else:
            diff = out - y
            rows = (diff**2).mean(-1)
            o = out.shape[-1]
            grad_out = grad_rows.unsqueeze(-1).expand(k, b, o) / o * (2 * diff)
        return (rows * mask).sum(1) / denom, grad_out
