"""The classifier's training hooks: cross-entropy (class-weighted with `--balance
loss`, label smoothing), mixup, and knowledge distillation from a teacher's
tempered predictions; validation by accuracy, balanced accuracy, F1 and loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.tasks.classification.metrics import classification_metrics
from edgetune.train.hooks import TrainHooks

DISTILL_T = (
    2.0  # softmax temperature of knowledge distillation (Hinton et al.): softer targets carry the teacher's doubts
)


def mixup(x: torch.Tensor, y: torch.Tensor, beta: torch.distributions.Beta) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Each image blended with another of the batch by a weight drawn from `beta`
    (from torch's seeded generator, so a resumed epoch draws the same): the blend,
    the other images' labels, and the weight of the first."""
    lam = float(beta.sample())
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def class_weights(labels: list[int], n_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return torch.tensor(len(labels) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)


class ClassifierHooks(TrainHooks):
    metrics = ("accuracy", "balanced_accuracy", "f1", "loss")

    def __init__(self, classes: list[str], cfg, labels: list[int] | None = None):
        if cfg.mixup < 0:
            raise EdgetuneError(f"--mixup {cfg.mixup}: give the Beta distribution's alpha (e.g. 0.2), or 0 for none.")
        self.classes, self.cfg = classes, cfg
        self.weights = class_weights(labels, len(classes)) if labels is not None else None
        self.criterion = nn.CrossEntropyLoss(
            weight=self.weights if cfg.balance == "loss" else None, label_smoothing=cfg.label_smoothing
        )
        self.mix = torch.distributions.Beta(cfg.mixup, cfg.mixup) if cfg.mixup > 0 else None

    def to(self, device: torch.device) -> ClassifierHooks:
        self.criterion = self.criterion.to(device)
        return self

    def loss(self, model, x, y, teacher=None) -> torch.Tensor:
        if self.mix is not None:
            x, y_other, lam = mixup(x, y, self.mix)
        logits = model(x)
        loss = self.criterion(logits, y)
        if self.mix is not None:
            # the loss of a blend is the blend of the losses on both labels (Zhang et al. 2018)
            loss = lam * loss + (1 - lam) * self.criterion(logits, y_other)
        if teacher is not None:
            with torch.no_grad():
                target = torch.softmax(teacher(x) / DISTILL_T, dim=1)
            kd = (
                nn.functional.kl_div(torch.log_softmax(logits / DISTILL_T, dim=1), target, reduction="batchmean")
                * DISTILL_T**2
            )
            loss = (1 - self.cfg.distill) * loss + self.cfg.distill * kd
        return loss

    def validate(self, logits, labels) -> dict:
        val = classification_metrics(labels, logits, self.classes, full=False)
        val["loss"] = (
            float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item())
            if len(labels)
            else 0.0
        )
        return val

    def sample_weights(self, dataset) -> torch.Tensor | None:
        return self.weights[torch.tensor(dataset.labels)] if self.weights is not None else None
