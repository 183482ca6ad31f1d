"""Model size statistics shared by prune, build and bench."""

from __future__ import annotations

import torch


def count_macs(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """(MACs, parameters) for one image of `size` (h, w)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 3, *size, device=device))
    model.train(was_training)
    return int(macs), int(params)
