"""The export's check of a segmentation graph: ONNX Runtime against the PyTorch
module it came from, on the check images: the share of pixels given the same
class, and the IoU of their defect pixels (where PyTorch finds enough of them for
the IoU to mean something)."""

from __future__ import annotations

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError

logger = log.get(__name__)


def compare_masks(path, reference, images: np.ndarray, min_agreement: float, min_iou: float, min_pixels: int) -> dict:
    import torch

    from edgetune.export.checks import ort_session

    with torch.no_grad():
        ref = [reference(torch.from_numpy(images[i : i + 16])) for i in range(0, len(images), 16)]
    ref_mask = np.concatenate([m.numpy() for m, _ in ref]).astype(np.uint8)
    ref_score = np.concatenate([s.float().numpy() for _, s in ref])
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    got = [sess.run(None, {name: images[i : i + 16]}) for i in range(0, len(images), 16)]
    mask = np.concatenate([g[0] for g in got]).astype(np.uint8)
    score = np.concatenate([g[1] for g in got]).reshape(-1)
    agreement = float((mask == ref_mask).mean())
    a, b = ref_mask > 0, mask > 0
    union = int((a | b).sum())
    iou = float((a & b).sum() / union) if union else 1.0
    score_diff = float(np.abs(score - ref_score).max()) if len(score) else 0.0
    summary = (
        f"pixel agreement with PyTorch {100 * agreement:.2f}% on {len(images)} images, defect-pixel IoU {iou:.4f} "
        f"({int(a.sum())} defect pixels in PyTorch's masks), largest defect-score difference {score_diff:.4g}"
    )
    if agreement < min_agreement or (a.sum() >= min_pixels and iou < min_iou):
        raise EdgetuneError(
            f"Export {path}: ONNX Runtime's class maps differ from PyTorch's: {summary} (at least "
            f"{100 * min_agreement:.0f}% agreement and IoU {min_iou} required). The exported graph computes something "
            "else than the trained model."
        )
    logger.info("Export checks passed: %s.", summary)
    return {
        "images": int(len(images)),
        "pixel_agreement": agreement,
        "defect_iou": iou,
        "defect_pixels": int(a.sum()),
        "max_score_diff": score_diff,
        "min_agreement": min_agreement,
        "summary": summary,
    }
