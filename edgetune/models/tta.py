"""Test-time augmentation: one prediction from the model's outputs on flipped
copies of the image. It costs one forward pass per view, so it is an evaluation
option: the deployed artifacts stay single-view."""

from __future__ import annotations

import torch
from torch import nn

# The dims of an NCHW batch that each view flips; () is the image itself.
VIEWS = {"none": [()], "hflip": [(), (3,)], "flips": [(), (3,), (2,), (2, 3)]}


class FlipTTA(nn.Module):
    """Averages the class probabilities over the views and returns their log, so
    argmax and softmax of the output are those of the averaged probabilities."""

    def __init__(self, model: nn.Module, views: str = "flips"):
        super().__init__()
        self.model, self.views = model, VIEWS[views]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack(
            [self.model(torch.flip(x, dims) if dims else x).float().softmax(-1) for dims in self.views]
        ).mean(0)
        return probs.clamp_min(1e-12).log()


def with_tta(model: nn.Module, views: str) -> nn.Module:
    return model if views == "none" else FlipTTA(model, views)
