"""What the training loop asks of a task: the loss of a batch, the model's
predictions of a batch, and the validation metrics of those predictions. The loop
(train/loop.py) does everything else the same way for every task: optimiser and
schedule, EMA, freezing, DDP, checkpoints and resume, early stopping."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class TrainHooks:
    metrics: tuple[str, ...] = ("loss",)  # validation metrics --metric may pick
    lower_is_better: frozenset[str] = frozenset({"loss"})  # the others: higher is better
    collate = None  # the DataLoader's collate_fn for (image, target) pairs; None: torch's default

    def to(self, device: torch.device) -> TrainHooks:
        """Move what the hooks hold (class weights, ...) to the training device."""
        return self

    def loss(
        self, model: torch.nn.Module, x: torch.Tensor, y: Any, teacher: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """The training loss of one batch (the model in train mode). `teacher`: a
        model whose predictions the loss may learn from (knowledge distillation)."""
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, x: torch.Tensor, y: Any = None) -> Any:
        """What validation keeps of one batch, the model in eval mode: by default
        its output as a float numpy array. `y`: the batch's targets (on the model's
        device), for a task whose validation loss needs its raw outputs."""
        return model(x).float().cpu().numpy()

    def validate(self, outputs: Any, targets: Any) -> dict:
        """Validation metrics of the whole split's predictions (`join`ed); holds
        every name in `metrics`."""
        raise NotImplementedError

    def sample_weights(self, dataset) -> torch.Tensor | None:
        """Per-image weights for `--balance sampler`; None: this task has none."""
        return None

    def score(self, val: dict, metric: str) -> float:
        """The number `--metric` maximises."""
        return -val[metric] if metric in self.lower_is_better else val[metric]


def join(parts: list) -> Any:
    """Batches of predictions or targets as one: arrays and tensors concatenated,
    lists (one entry per image) chained."""
    if not parts:
        return []
    if isinstance(parts[0], torch.Tensor):
        parts = [p.numpy() for p in parts]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [x for p in parts for x in p]


def take(values: Any, order) -> Any:
    """`values` (an array or a list) in the order of the indices `order`."""
    if isinstance(values, np.ndarray):
        return values[order]
    return [values[i] for i in order]
