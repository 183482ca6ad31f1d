"""Structured channel pruning with torch-pruning's DepGraph.

Pruning runs in steps; each step removes a share of the channels (a fresh
pruner on the current model, so a finished step is a self-contained checkpoint)
and is followed by recovery fine-tuning through the shared training loop. Channel
counts stay multiples of `round_to`; the prediction head is never pruned. The result is
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

    table = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "fpgm": tp.importance.FPGMImportance,
        "lamp": tp.importance.LAMPImportance,
        "random": tp.importance.RandomImportance,
    }
    if name not in table:
        raise EdgetuneError(f"--importance {name!r}: use one of {', '.join(IMPORTANCE)} (magnitude l1 is the default).")
    return table[name]()


def _attention_layers(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if hasattr(m, "num_heads")
        and (hasattr(m, "qkv") or hasattr(m, "q_proj") or isinstance(m, nn.MultiheadAttention))
    ]


def mlp_hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The first Linear of each plain timm MLP (Linear -> activation -> Linear): its
    output channels are the MLP's hidden width, which nothing outside the MLP sees."""
    from timm.layers import Mlp

    return [
        m.fc1
        for m in model.modules()
        if type(m) is Mlp and isinstance(m.fc1, nn.Linear) and isinstance(m.fc2, nn.Linear)
    ]


def check_prunable(model: nn.Module, model_name: str) -> None:
    """Refuse, before any training, models that pruning cannot shrink: attention
    without plain MLPs beside it (pruning attention heads is not supported)."""
    attention = _attention_layers(model)
    if attention and not mlp_hidden_layers(model):
        m = model.get_submodule(attention[0])
        raise EdgetuneError(
            f"{model_name} cannot be pruned: layer '{attention[0]}' ({type(m).__name__}) is multi-head attention, and "
            "pruning attention heads is not supported (nor are its MLPs plain Linear -> activation -> Linear ones "
            "whose hidden channels could be pruned instead). Skip pruning for this model: run `edgetune quantize` on "
            "the float run directly."
        )


def _head(model: nn.Module, keep=()) -> list[nn.Module]:
    """The layers whose outputs are the predictions: a timm model's classifier, and
    the layers named in `keep` (the task's: a detector's or a decoder's prediction layers)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    layers = [classifier, *(model.get_submodule(name) for name in keep)]
    return [m for m in layers if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]


def _ignored_layers(model: nn.Module, keep=()) -> list[nn.Module]:
    """What pruning leaves alone: the prediction head; in a model with attention,
    every layer but the MLPs' first Linear, so only the MLP hidden channels are
    removed (the token width runs through every block's attention and residual sums)."""
    ignored = _head(model, keep)
    if _attention_layers(model):
        hidden = {id(m) for m in mlp_hidden_layers(model)}
        ignored += [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in hidden]
    return ignored


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


def prune_groups(model: nn.Module, keep=()) -> list[str]:
    """The parts whose pruning ratios `--target-latency` sets apart: the model's
    top-level layers with weights, the body (the container holding most of the
    parameters, e.g. EfficientNet's `blocks`, ConvNeXt's `stages`) split into its
    stages. The prediction head is not one: it is never pruned."""
    total = sum(p.numel() for p in model.parameters())
    head = {id(m) for m in _head(model, keep)}

    def weighted(m):
        return any(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())

    groups = []
    for name, child in model.named_children():
        if id(child) in head or not weighted(child):
            continue
        body = (
            isinstance(child, (nn.Sequential, nn.ModuleList)) and sum(p.numel() for p in child.parameters()) > total / 2
        )
        groups += [f"{name}.{n}" for n, c in child.named_children() if weighted(c)] if body else [name]
    return groups


def prune_once(
    model: nn.Module,
    size: tuple[int, int],
    ratio: float,
    round_to: int,
    imp: str,
    ratios: dict[str, float] | None = None,
    keep=(),
) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer (uniformly, each kept
    count rounded to the nearest multiple of `round_to`), in place; `ratios` (group
    name -> ratio, see `prune_groups`) overrides it for the layers in those groups.
    In a model with attention (ViT, DeiT) only the MLP hidden channels are prunable.
    `keep`: names of the task's prediction layers, never pruned (as a timm classifier)."""
    ratios = {name: r for name, r in (ratios or {}).items() if r > 0}
    if ratio <= 0 and not ratios:
        return model
    ignored = _ignored_layers(model, keep)
    example = torch.randn(1, 3, *size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # ConvNeXt's layer-scale gammas are "unwrapped" parameters; torch-pruning
            # prunes their last (channel) dimension, which is what they need.
            warnings.filterwarnings("ignore", message="Unwrapped parameters")
            pruner = _pruner_class()(
                model,
                example,
                importance=importance(imp),
                pruning_ratio=max(ratio, 0.0),
                ignored_layers=ignored,
                round_to=round_to or None,
                pruning_ratio_dict={model.get_submodule(name): r for name, r in ratios.items()} or None,
            )
            pruner.step()
    except Exception as e:
        raise EdgetuneError(
            f"torch-pruning cannot prune {type(model).__name__}{_layer_hint(model, e)}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Prune another backbone or skip pruning for this one."
        ) from None
    finally:
        model.train(was_training)
    return model


def _layer_hint(model: nn.Module, e: Exception) -> str:
    """' at layer NAME' when the error names one of the model's layers."""
    text = str(e)
    names = [n for n, _ in model.named_modules() if n and n in text]
    return f" at layer {max(names, key=len)}" if names else ""


def mac_reduction(
    model: nn.Module, size: tuple[int, int], ratio: float, round_to: int, imp: str, steps: int = 1, keep=()
) -> float:
    """The share of `model`'s MACs that pruning `ratio` of the channels in `steps`
    steps removes (on a copy; each step rounds the channel counts again)."""
    pruned = copy.deepcopy(model)
    for r in step_ratios(ratio, steps):
        prune_once(pruned, size, r, round_to, imp, keep=keep)
    return 1 - count_macs(pruned, size)[0] / count_macs(model, size)[0]


def ratio_for_macs(
    model: nn.Module, size: tuple[int, int], reduction: float, round_to: int, imp: str, steps: int = 1, keep=()
) -> float:
    """The channel ratio whose pruning in `steps` steps removes at least `reduction`
    of the MACs (bisection). The steps are simulated: one-shot ratios overshoot
    (45% asked, 50% removed in 2 steps)."""
    lo, hi = 0.0, 0.95
    most = mac_reduction(model, size, hi, round_to, imp, steps, keep)
    if most < reduction:  # e.g. a ViT, whose MLP hidden channels alone are prunable
        raise EdgetuneError(
            f"--target-macs {reduction:g}: pruning {type(model).__name__} removes at most {most:.0%} of its MACs "
            f"(95% of its prunable channels). Ask for less, or give --ratio."
        )
    for _ in range(8):
        mid = (lo + hi) / 2
        if mac_reduction(model, size, mid, round_to, imp, steps, keep) >= reduction:
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
