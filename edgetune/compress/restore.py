"""Rebuild a run's model from its records: the timm architecture, the recorded
layer shapes of a pruned model, the NNCF config of a quantized one; then its
state dict (weights_only)."""

from __future__ import annotations

import torch

from edgetune.models.backbone import create_backbone


def load_run_model(run, device: str = "cpu") -> torch.nn.Module:
    model = create_backbone(run.model_name, len(run.classes), pretrained=False, img_size=tuple(run.spec.size))
    if run.info.get("arch"):
        from edgetune.compress.shapes import apply_shapes

        apply_shapes(model, run.info["arch"])
    state = torch.load(run.dir / "model.pt", map_location="cpu", weights_only=True)
    if run.info.get("quant"):
        from edgetune.compress.quantize import restore_quantized

        model = restore_quantized(model, run, state)
    else:
        model.load_state_dict(state)
    return model.to(device).eval()
