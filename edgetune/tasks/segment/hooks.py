"""Segmentation's training hooks. The loss of tiny defects on a large background
is cross-entropy plus soft Dice over the defect classes present in the batch:
Dice weighs every defect class alike, so a 50-pixel blowhole counts as much as a
tile-wide unevenness (`--balance loss`, the default; `--balance none`:
cross-entropy alone). `--balance sampler` keeps the Dice term and draws images of
rare classes more often: LVIS's repeat-factor rule, an image weighted by
1/sqrt(share of training images that show its rarest class), so a class seen in 4%
of the images comes about 2.4 times as often per epoch and none is drawn so often
that its few images are learnt by heart.
Class-weighted cross-entropy on top (ENet's weights, or their square root) made
the masks swell: test defect IoU 0.66-0.72 on the generated tiles against
0.75-0.76 without (three and two seeds). Distillation matches the teacher's
per-pixel class distribution. Validation keeps each image's confusion matrix and
loss only, so under torchrun the gathered predictions are a few numbers per image
and mIoU covers the whole split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgetune.data.masks import classes_present
from edgetune.errors import EdgetuneError
from edgetune.tasks.segment.metrics import scores
from edgetune.train.hooks import TrainHooks

DICE_WEIGHT = 1.0
DISTILL_T = 2.0


def soft_dice(logits: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean Dice over the batch of the defect classes present in its masks, on
    probabilities. A class absent from the batch is left to cross-entropy: its Dice
    would be ~0 for any probability mass at all, and with five rare classes most
    batches lack most of them, so that term pushed every defect class down."""
    prob = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    truth = onehot.sum(dim=(0, 2, 3))
    present = truth > 0
    if not present.any():
        return logits.new_zeros(())
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + truth
    return 1.0 - ((2 * inter + eps) / (total + eps))[present].mean()


class SegmentHooks(TrainHooks):
    metrics = ("miou", "miou_defects", "pixel_accuracy", "loss")

    def __init__(self, classes: list[str], cfg):
        if cfg.mixup > 0:
            raise EdgetuneError(f"--mixup {cfg.mixup}: blending images blends their masks; --task segment takes none.")
        self.classes, self.cfg, self.n = classes, cfg, len(classes)
        self.dice = DICE_WEIGHT if cfg.balance in ("loss", "sampler") else 0.0
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def loss(self, model, x, y, teacher=None) -> torch.Tensor:
        y = y.long()
        logits = model(x)
        loss = self.criterion(logits, y) + (self.dice * soft_dice(logits, y) if self.dice else 0.0)
        if teacher is not None:
            with torch.no_grad():
                target = torch.softmax(teacher(x) / DISTILL_T, dim=1)
            kd = F.kl_div(torch.log_softmax(logits / DISTILL_T, dim=1), target, reduction="none").sum(1).mean()
            loss = (1 - self.cfg.distill) * loss + self.cfg.distill * kd * DISTILL_T**2
        return loss

    def sample_weights(self, dataset) -> torch.Tensor:
        present = [classes_present(target) for _, target in dataset.pairs]
        # an image without defects is counted as showing background, one with defects by them alone
        shown = [p - {0} or {0} for p in present]
        counts = np.bincount([c for p in shown for c in p], minlength=self.n)
        share = np.maximum(counts, 1) / max(len(shown), 1)
        return torch.tensor([max(share[c] ** -0.5 for c in p) for p in shown], dtype=torch.float64)

    def predict(self, model, x, y=None):
        """Per image: its confusion matrix (C x C, flattened) and its loss."""
        logits = model(x).float()
        n = self.n
        pred = logits.argmax(1)
        out = np.zeros((len(x), n * n + 1), np.float64)
        if y is None:
            return out
        y = y.long()
        idx = (y * n + pred).flatten(1)
        counts = torch.zeros(len(x), n * n, dtype=torch.float64, device=idx.device)
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        out[:, :-1] = counts.cpu().numpy()
        per_image = F.cross_entropy(logits, y, reduction="none").flatten(1).mean(1)
        out[:, -1] = per_image.cpu().numpy()
        return out

    def validate(self, outputs, targets) -> dict:
        outputs = np.asarray(outputs, dtype=np.float64).reshape(-1, self.n * self.n + 1)
        s = scores(outputs[:, :-1].sum(0).reshape(self.n, self.n))
        return {
            "miou": s["miou"] or 0.0,
            "miou_defects": s["miou_defects"] or 0.0,
            "pixel_accuracy": s["pixel_accuracy"],
            "loss": float(outputs[:, -1].mean()) if len(outputs) else 0.0,
        }
