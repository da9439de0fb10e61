"""Batched FC training: R runs (seeds x learning rates x gradients of one model shape) as one
vectorized model, each run with the numbers it gets alone (docs/networks.md)."""
from fgexp.nn.batched.loop import check_batch, train_runs
from fgexp.nn.batched.stacked import StackedFC, stack

__all__ = ["StackedFC", "check_batch", "stack", "train_runs"]
