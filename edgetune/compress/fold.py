"""Graph preparation before quantization: fold BatchNorm into the convolution
before it, fold layer-scale into the layer before it, and fix a dynamic-size
ViT's input size.

Quantizing a Conv -> BatchNorm pair leaves the BatchNorm as float work between
the integer convolution and its output quantizer, and ONNX Runtime then cannot
fuse Conv + Q/DQ into an integer kernel (it cannot fold a BatchNorm into a
convolution whose weight comes from a DequantizeLinear either). Folding first
gives NNCF, the export and every runtime a plain Conv with bias.

The pairs are found by tracing one forward pass: a BatchNorm whose input is the
very tensor a Conv2d returned. The folded model is checked against the original
on a random input, so a pair found wrongly fails loudly instead of silently."""

from __future__ import annotations

import torch
from torch import nn

from edgetune.errors import EdgetuneError


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d)  # timm's BatchNormAct2d is a subclass


def find_conv_bn_pairs(model: nn.Module, size: tuple[int, int]) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs where the BatchNorm consumes the conv's output."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def conv_hook(mod, args, out):
        produced[id(out)] = names[mod]

    def bn_pre_hook(mod, args):
        conv = produced.get(id(args[0]))
        if conv is not None:
            pairs.append((conv, names[mod]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif _is_bn(m):
            hooks.append(m.register_forward_pre_hook(bn_pre_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen, unique = set(), []
    for conv, bn in pairs:  # a module called twice would appear twice
        if bn not in seen:
            seen.add(bn)
            unique.append((conv, bn))
    return unique


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a BatchNorm once its affine part lives in the conv: nothing,
    or timm's fused activation (BatchNormAct2d = bn -> drop -> act)."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, size: tuple[int, int], check: bool = True) -> list[tuple[str, str]]:
    """Fold every Conv2d -> BatchNorm2d pair in place; returns the folded pairs.
    On a freshly built model (before loading a folded state dict) this rebuilds
    the same structure, which is how a quantized run is restored."""
    pairs = find_conv_bn_pairs(model, size)
    if not pairs:
        return pairs
    was_training = model.training
    model.eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(next(model.parameters()).device)
    before = model(x) if check else None
    for conv_name, bn_name in pairs:
        conv: nn.Conv2d = model.get_submodule(conv_name)
        bn: nn.BatchNorm2d = model.get_submodule(bn_name)
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
        factor = gamma / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(factor.view(-1, 1, 1, 1).to(conv.weight.dtype))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        _set(model, bn_name, _bn_replacement(bn))
    if check:
        after = _outputs(model(x))
        before = _outputs(before)
        err = max((a - b).abs().max().item() for a, b in zip(after, before))
        tol = 1e-3 * max(1.0, *(b.abs().max().item() for b in before))
        if not err <= tol:
            raise EdgetuneError(
                f"Folding BatchNorm into the convolutions changed the model's outputs by {err:.3g} (pairs "
                f"{pairs[:3]}...). This model's Conv -> BatchNorm layout is not supported for folding; quantize it "
                "with --no-fold-bn."
            )
    model.train(was_training)
    return pairs


def _layer_scale_pairs(model: nn.Module):
    """(layer, owner, attribute) for each layer-scale multiply that directly follows
    a Conv2d or Linear: ConvNeXt's block (`gamma` after `mlp.fc2`) and timm's ViT
    block (`ls1` after `attn.proj`, `ls2` after `mlp.fc2`; LayerScale modules)."""
    from timm.layers import LayerScale

    for m in model.modules():
        fc2 = getattr(getattr(m, "mlp", None), "fc2", None)
        if type(m).__name__ == "ConvNeXtBlock" and isinstance(getattr(m, "gamma", None), nn.Parameter):
            if isinstance(fc2, (nn.Conv2d, nn.Linear)):
                yield fc2, m, "gamma"
        for attr, layer in (("ls1", getattr(getattr(m, "attn", None), "proj", None)), ("ls2", fc2)):
            if isinstance(getattr(m, attr, None), LayerScale) and isinstance(layer, nn.Linear):
                yield layer, m, attr


@torch.no_grad()
def fold_layer_scale(model: nn.Module) -> int:
    """Fold every layer-scale multiply into the layer before it (weights and bias
    times the per-channel factor), in place; returns how many. The multiply would
    sit between the layer and its output quantizer as float work, so ONNX Runtime
    could not fuse that layer into an integer kernel; folded, the outputs are the
    same and the layer fuses. Like `fold_batchnorm`, running it on a fresh model
    rebuilds the structure a folded state dict needs."""
    n = 0
    for layer, owner, attr in list(_layer_scale_pairs(model)):
        scale = getattr(owner, attr)
        gamma = (scale if isinstance(scale, nn.Parameter) else scale.gamma).detach().flatten()
        layer.weight.mul_(gamma.view(-1, *[1] * (layer.weight.ndim - 1)).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.mul_(gamma.to(layer.bias.dtype))
        if isinstance(scale, nn.Parameter):
            setattr(owner, attr, None)  # ConvNeXtBlock skips the multiply when gamma is None
        else:
            setattr(owner, attr, nn.Identity())
        n += 1
    return n


def _outputs(out) -> list[torch.Tensor]:
    """A model's output as a list of tensors (a detector returns several)."""
    if isinstance(out, torch.Tensor):
        return [out.float()]
    return [t for o in (out.values() if isinstance(out, dict) else out) for t in _outputs(o)]


def fix_input_size(model: nn.Module, size: tuple[int, int]) -> bool:
    """Give a timm ViT built with `dynamic_img_size` a fixed input size (its
    position embedding resampled once, as its forward would on every call). The
    on-the-fly resampling's shape arithmetic becomes tensor ops under ONNX tracing,
    which shifts NNCF's op-indexed quantizer hooks onto integer tensors; fixed, the
    exported graph matches the calibrated one. Outputs are unchanged."""
    if not getattr(model, "dynamic_img_size", False) or not hasattr(model, "set_input_size"):
        return False
    from timm.layers import Format

    model.set_input_size(img_size=tuple(size))
    model.dynamic_img_size = False
    pe = model.patch_embed
    pe.dynamic_img_size, pe.flatten, pe.output_fmt = False, True, Format.NCHW
    return True
