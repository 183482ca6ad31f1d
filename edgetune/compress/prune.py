"""Structured channel pruning with torch-pruning's DepGraph.

Pruning runs in steps; each step removes a share of the channels (a fresh
pruner on the current model, so a finished step is a self-contained checkpoint)
and is followed by recovery fine-tuning through the shared training loop. Channel
counts stay multiples of `round_to`; the classifier is never pruned. The result is
recorded as layer shapes (`shapes.record_shapes`) so it reloads without this code.
The stage driver (steps, recovery, records) is edgetune/stages/prune.py."""

from __future__ import annotations

import copy
import functools
import math
import warnings

import torch
from torch import nn

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.models.stats import count_macs

logger = log.get(__name__)
IMPORTANCE = ("l1", "l2", "fpgm", "lamp", "random")


def importance(name: str):
    import torch_pruning as tp

    table = {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "l2": lambda: tp.importance.MagnitudeImportance(p=2),
             "fpgm": tp.importance.FPGMImportance, "lamp": tp.importance.LAMPImportance, "random": tp.importance.RandomImportance}
    if name not in table:
        raise EdgetuneError(f"--importance {name!r}: use one of {', '.join(IMPORTANCE)} (magnitude l1 is the default).")
    return table[name]()


def check_prunable(model: nn.Module, model_name: str) -> None:
    """Refuse models whose attention heads would need pruning: name the layer."""
    for name, m in model.named_modules():
        if hasattr(m, "num_heads") and (hasattr(m, "qkv") or hasattr(m, "q_proj") or isinstance(m, nn.MultiheadAttention)):
            raise EdgetuneError(f"{model_name} cannot be pruned: layer '{name}' ({type(m).__name__}) is multi-head attention, and pruning "
                                "attention heads is not supported. Skip pruning for this model: run `edgetune quantize` on the float run directly.")


@functools.cache
def _pruner_class():
    import torch_pruning as tp

    class NearestMultiplePruner(tp.pruner.MetaPruner):
        """torch-pruning rounds the kept channels *down* to a multiple of round_to,
        which falls hardest on narrow layers: pruning 17% of efficientnet_lite0's
        channels in two steps left its 24-channel stage 8 channels and its stem 16
        of 32, while the wide layers lost 17%. Round to the nearest multiple (half
        up, at least one multiple, never more than the layer has)."""

        def _round_to(self, n_pruned, current_channels, round_to):
            keep = max(round_to, math.floor((current_channels - n_pruned) / round_to + 0.5) * round_to)
            return max(current_channels - min(keep, current_channels), 0)

    return NearestMultiplePruner


def prune_once(model: nn.Module, size: tuple[int, int], ratio: float, round_to: int, imp: str) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer (uniformly, each kept
    count rounded to the nearest multiple of `round_to`), in place."""
    if ratio <= 0:
        return model
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    ignored = [m for m in (classifier,) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    example = torch.randn(1, 3, *size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # ConvNeXt's layer-scale gammas are "unwrapped" parameters; torch-pruning
            # prunes their last (channel) dimension, which is what they need.
            warnings.filterwarnings("ignore", message="Unwrapped parameters")
            pruner = _pruner_class()(model, example, importance=importance(imp), pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to or None)
            pruner.step()
    except Exception as e:
        raise EdgetuneError(f"torch-pruning cannot prune {type(model).__name__}{_layer_hint(model, e)}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}. Prune another backbone or skip pruning for this one.") from None
    finally:
        model.train(was_training)
    return model


def _layer_hint(model: nn.Module, e: Exception) -> str:
    """' at layer NAME' when the error names one of the model's layers."""
    text = str(e)
    names = [n for n, _ in model.named_modules() if n and n in text]
    return f" at layer {max(names, key=len)}" if names else ""


def mac_reduction(model: nn.Module, size: tuple[int, int], ratio: float, round_to: int, imp: str, steps: int = 1) -> float:
    """The share of `model`'s MACs that pruning `ratio` of the channels in `steps`
    steps removes (on a copy; each step rounds the channel counts again)."""
    pruned = copy.deepcopy(model)
    for r in step_ratios(ratio, steps):
        prune_once(pruned, size, r, round_to, imp)
    return 1 - count_macs(pruned, size)[0] / count_macs(model, size)[0]


def ratio_for_macs(model: nn.Module, size: tuple[int, int], reduction: float, round_to: int, imp: str, steps: int = 1) -> float:
    """The channel ratio whose pruning in `steps` steps removes at least `reduction`
    of the MACs (bisection). The steps are simulated: one-shot ratios overshoot
    (45% asked, 50% removed in 2 steps)."""
    lo, hi = 0.0, 0.95
    for _ in range(8):
        mid = (lo + hi) / 2
        if mac_reduction(model, size, mid, round_to, imp, steps) >= reduction:
            hi = mid
        else:
            lo = mid
    return hi


def step_ratios(total: float, steps: int) -> list[float]:
    """Per-step ratios (each relative to the model it prunes) that keep
    1 - total*k/steps of the original channels after step k."""
    ratios, kept = [], 1.0
    for k in range(1, steps + 1):
        target = 1 - total * k / steps
        ratios.append(1 - target / kept)
        kept = target
    return ratios
