"""Freeze policies over timm's parameter groups (stem ... stages ... head).

`full` trains everything; `head` only the head; `last:N` the last N stages plus the
head; `gradual:K` starts with the head and unfreezes one more stage every K epochs."""

from __future__ import annotations

import re

import torch

from edgetune.errors import EdgetuneError

PATTERN = re.compile(r"^(full|head|last:(\d+)|gradual:(\d+))$")


def check_policy(policy: str) -> str:
    if not PATTERN.match(policy):
        raise EdgetuneError(
            f"--freeze {policy!r}: use full, head, last:N (last N stages + head) or gradual:K (unfreeze one stage "
            "every K epochs)."
        )
    return policy


def backbone_stages(backbone: torch.nn.Module, prefix: str):
    """A timm `group_matcher` for a model that holds a backbone under `prefix` and
    its own layers for the task (a detector's neck and heads, a segmenter's decoder):
    the backbone's top-level layers in order, the one holding most weights (its body:
    EfficientNet's blocks) split into one group per child (stage), and everything
    outside the backbone last, as the head."""
    children = [n for n, _ in backbone.named_children()]
    sizes = {n: sum(p.numel() for p in c.parameters()) for n, c in backbone.named_children()}
    body = max(sizes, key=sizes.get) if sizes else None
    split = body is not None and isinstance(getattr(backbone, body), (torch.nn.Sequential, torch.nn.ModuleList))

    def order(name: str) -> tuple:
        parts = name.split(".")
        if parts[0] != prefix or len(parts) < 2 or parts[1] not in children:
            return (len(children) + 1,)  # the task's own layers: the head
        i = children.index(parts[1])
        return (i, int(parts[2])) if split and parts[1] == body and parts[2].isdigit() else (i, 0)

    return order


def parameter_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names grouped from the stem (first) to the head (last)."""
    from timm.models import group_parameters

    core = getattr(model, "_orig_mod", model)
    try:
        groups = group_parameters(core, core.group_matcher(coarse=True))
        return [list(v) for _, v in sorted(groups.items())]
    except (AttributeError, NotImplementedError):
        names = [n for n, _ in core.named_parameters()]
        return [names[:-2], names[-2:]]


def trainable_groups(policy: str, n_groups: int, epoch: int) -> int:
    """How many groups, counted from the head, train at `epoch`."""
    m = PATTERN.match(check_policy(policy))
    if policy == "full":
        return n_groups
    if policy == "head":
        return 1
    if m.group(2) is not None:
        return min(n_groups, 1 + int(m.group(2)))
    return min(n_groups, 1 + epoch // max(1, int(m.group(3))))


def apply_freeze(model: torch.nn.Module, policy: str, epoch: int) -> int:
    """Set requires_grad by policy; returns the number of trainable parameters."""
    groups = parameter_groups(model)
    k = trainable_groups(policy, len(groups), epoch)
    train = {n for g in groups[len(groups) - k :] for n in g}
    n = 0
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue  # e.g. NNCF quantizers' integer flags are parameters but never train
        p.requires_grad_(name in train)
        n += p.numel() if name in train else 0
    return n
