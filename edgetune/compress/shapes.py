"""The architecture record of a pruned model: every module's size attributes and
every parameter's and buffer's shape. `apply_shapes` resizes a freshly built timm
model to that record, so a pruned run reloads from its state dict alone, without
torch-pruning and without unpickling a module."""

from __future__ import annotations

import torch
from torch import nn

from edgetune.errors import EdgetuneError

# Size attributes torch-pruning rewrites on the layers it touches (and timm keeps
# on models and heads); anything else it changes lives in parameter shapes.
SIZE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_channels",
    "num_groups",
    "embed_dim",
    "num_heads",
    "head_dim",
    "head_hidden_size",
)


def _plain(v):
    return list(v) if isinstance(v, (tuple, torch.Size)) else v


def record_shapes(model: nn.Module) -> dict:
    """{module name: {"attrs": {...}, "params": {name: shape}, "buffers": {name: shape}}}, JSON-ready."""
    arch = {}
    for name, mod in model.named_modules():
        attrs = {
            a: _plain(getattr(mod, a))
            for a in SIZE_ATTRS
            if isinstance(getattr(mod, a, None), (int, tuple, list, torch.Size))
        }
        params = {n: list(p.shape) for n, p in mod.named_parameters(recurse=False)}
        buffers = {n: list(b.shape) for n, b in mod.named_buffers(recurse=False) if b is not None}
        if attrs or params or buffers:
            arch[name] = {"attrs": attrs, "params": params, "buffers": buffers}
    return arch


def apply_shapes(model: nn.Module, arch: dict) -> nn.Module:
    """Resize `model` in place to `arch` (from `record_shapes`). Values are left
    uninitialised: load the run's state dict next."""
    modules = dict(model.named_modules())
    for name, rec in arch.items():
        mod = modules.get(name)
        if mod is None:
            raise EdgetuneError(
                f"The recorded architecture names a layer '{name}' that {type(model).__name__} does not have: "
                "the run was made with another model or timm version."
            )
        for a, v in rec.get("attrs", {}).items():
            setattr(mod, a, tuple(v) if isinstance(v, list) else v)
        for n, shape in rec.get("params", {}).items():
            old = getattr(mod, n)
            if list(old.shape) != shape:
                setattr(mod, n, nn.Parameter(torch.empty(shape, dtype=old.dtype), requires_grad=old.requires_grad))
        for n, shape in rec.get("buffers", {}).items():
            old = getattr(mod, n)
            if old is not None and list(old.shape) != shape:
                mod.register_buffer(
                    n, torch.empty(shape, dtype=old.dtype), persistent=n not in mod._non_persistent_buffers_set
                )
    return model
