"""A PyTorch segmentation model's typed results on image files, the training
side's way (PIL decoding, the run's preprocessing) and read by the device's own
decoding (`SegmentSession.decode`): masks mapped back onto each frame alike."""

from __future__ import annotations

import torch

from edgetune import log


@torch.no_grad()
def torch_results(model, paths: list[str], spec, session, batch_size: int = 16, desc: str = "") -> list:
    from edgetune.data.transforms import load_rgb, normalize
    from edgetune.runtime.tasks.segment import MASK, SCORE
    from edgetune.tasks.segment.model import MaskOutputs

    deploy = model if isinstance(model, MaskOutputs) else MaskOutputs(model)
    deploy.eval()
    device = next(deploy.parameters()).device
    out = []
    with log.progress(desc or "segmenting", total=len(paths)) as advance:
        for i in range(0, len(paths), batch_size):
            images = [load_rgb(p) for p in paths[i : i + batch_size]]
            x = torch.stack([normalize(im, spec) for im in images]).to(device)
            mask, score = deploy(x)
            sizes = [tuple(im.shape[1:]) for im in images]
            out += session.decode({MASK: mask.cpu().numpy(), SCORE: score.float().cpu().numpy()}, sizes)
            advance(len(images))
    return out
