"""R fully connected networks of one shape as stacked tensors (a leading run dimension).

The FC model of fgexp.nn.models.fc is a chain of Linear layers with ReLU after every hidden
one. Stacking R such models gives weights (R, out, in) and biases (R, out); a forward pass is
one batched matmul per layer. Each run's numbers come from its own slice only: no operation
reduces over the run dimension.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StackedFC:
    weights: list[torch.Tensor]   # layer l: (R, out_l, in_l)
    biases: list[torch.Tensor]    # layer l: (R, out_l)
    names: list[tuple[str, str]]  # layer l: state-dict names of its weight and bias

    @property
    def runs(self) -> int:
        return len(self.weights[0])

    def params(self) -> dict[str, torch.Tensor]:
        """Every parameter (R, *shape), in the model's named_parameters order."""
        out = {}
        for (w_name, b_name), w, b in zip(self.names, self.weights, self.biases):
            out[w_name], out[b_name] = w, b
        return out

    def select(self, index: Sequence[int]) -> "StackedFC":
        """The runs at `index` (copies), in that order."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.weights[0].device)
        return StackedFC([w[idx] for w in self.weights], [b[idx] for b in self.biases],
                         self.names)


def fc_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, Linear) of an FC BlockModel, in order; ValueError for any other model."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    allowed = (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential, nn.ModuleList)
    others = [type(m).__name__ for _, m in model.named_modules()
              if m is not model and not isinstance(m, allowed)]
    if not layers or others:
        found = ", ".join(sorted(set(others))) or "no Linear"
        raise ValueError("the batched engine trains FC networks (Flatten, Linear, ReLU) only; "
                         f"got {type(model).__name__} with {found}")
    return layers


def shape_of(model: nn.Module) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(m.weight.shape) for _, m in fc_layers(model))


def stack(models: Sequence[nn.Module]) -> StackedFC:
    """Stack R FC models of one shape; ValueError naming the first run of another shape."""
    if len(models) < 1:
        raise ValueError("a batch needs at least one run (R >= 1), got none")
    first = shape_of(models[0])
    for i, model in enumerate(models):
        if shape_of(model) != first:
            raise ValueError(f"runs of different shapes in one batch: run 0 has layers {first}, "
                             f"run {i} has {shape_of(model)}")
    layers = [fc_layers(m) for m in models]
    names = [(f"{name}.weight", f"{name}.bias") for name, _ in layers[0]]
    weights = [torch.stack([ls[l][1].weight.detach() for ls in layers])
               for l in range(len(names))]  # stack copies: the models stay untouched
    biases = [torch.stack([ls[l][1].bias.detach() for ls in layers]) for l in range(len(names))]
    return StackedFC(weights, biases, names)


def write_back(stacked: StackedFC, position: int, model: nn.Module) -> None:
    """Copy run `position` of the stack into `model` (for its checkpoint or its caller)."""
    with torch.no_grad():
        for (_, layer), w, b in zip(fc_layers(model), stacked.weights, stacked.biases):
            layer.weight.copy_(w[position])
            layer.bias.copy_(b[position])


def forward(stacked: StackedFC, a: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """Layer inputs a_l (R, B, in_l), ReLU masks (R, B, out_l) of hidden layers, logits.

    a is flat images (R, B, D) (each run its own batch) or (B, D) (one batch for all runs).
    """
    inputs, masks = [], []
    last = len(stacked.weights) - 1
    for l, (w, b) in enumerate(zip(stacked.weights, stacked.biases)):
        inputs.append(a)
        z = torch.matmul(a, w.transpose(1, 2)) + b.unsqueeze(1)  # (R, B, out_l)
        if l < last:
            masks.append(z > 0)
            a = z.relu()
        else:
            a = z
    return inputs, masks, a


def cross_entropy_runs(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (R, B) of logits (R, B, C) and labels (R, B) or (B,)."""
    r, b, c = logits.shape
    labels = y.expand(r, b) if y.dim() == 1 else y
    return F.cross_entropy(logits.reshape(r * b, c), labels.reshape(-1),
                           reduction="none").view(r, b)


@torch.no_grad()
def evaluate(stacked: StackedFC, x: torch.Tensor, y: torch.Tensor, batch_size: int
             ) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy of every run over one split (x (N, ...), y (N,))."""
    loss_sum = torch.zeros(stacked.runs, dtype=torch.float64, device=x.device)
    correct = torch.zeros(stacked.runs, dtype=torch.long, device=x.device)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size].flatten(1), y[start:start + batch_size]
        _, _, logits = forward(stacked, xb)
        loss_sum += cross_entropy_runs(logits, yb).sum(1).double()
        correct += (logits.argmax(-1) == yb).sum(1)
    return (loss_sum / len(y)).tolist(), (correct.double() / len(y)).tolist()
