"""The export's check of a detector graph: ONNX Runtime against the PyTorch module
it came from, on the check images. Every candidate PyTorch scores at least
`min_score` must come back from ONNX Runtime with the same class, a box of IoU
>= 0.5 (the best of its class) and, in the median, a close score; the matched
boxes' IoU and score differences are reported. The median, not the largest: INT8
integer kernels round otherwise than NNCF's simulation, and a score near the
bottom of the sigmoid's range moves by tenths on a few candidates (a tiny test
model: median 0.004, 99th percentile 0.3), while a broken graph moves them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.tasks.detect.metrics import iou

logger = log.get(__name__)
MIN_FOUND = 0.95  # share of PyTorch's confident candidates ONNX Runtime must give back
MAX_SCORE_DIFF = 0.05  # median score difference of the matched candidates


def _outputs(reference, images: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    import torch

    parts = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            parts.append([o.numpy() for o in reference(torch.from_numpy(images[i : i + batch]))])
    return [np.concatenate(p) for p in zip(*parts)]


def match_candidates(a: tuple, b: tuple, min_score: float) -> dict:
    """a's candidates (boxes, scores, classes of one image) scoring >= min_score, each
    against b's best same-class box."""
    found, ious, diffs = 0, [], []
    keep = np.flatnonzero(a[1] >= min_score)
    for k in keep:
        same = np.flatnonzero(b[2] == a[2][k])
        if not len(same):
            continue
        ov = iou(a[0][k : k + 1], b[0][same])[0]
        j = int(np.argmax(ov))
        if ov[j] >= 0.5:
            found += 1
            ious.append(float(ov[j]))
            diffs.append(abs(float(a[1][k]) - float(b[1][same[j]])))
    return {"candidates": int(len(keep)), "found": found, "ious": ious, "score_diffs": diffs}


def compare_candidates(path: Path, reference, images: np.ndarray, min_score: float) -> dict:
    from edgetune.export.checks import ort_session

    want = _outputs(reference, images)
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    order = [o.name for o in sess.get_outputs()]
    got = [
        np.concatenate(p) for p in zip(*(sess.run(None, {name: images[i : i + 32]}) for i in range(0, len(images), 32)))
    ]
    got = [got[order.index(n)] for n in ("boxes", "scores", "classes")]
    per = [match_candidates(tuple(w[i] for w in want), tuple(g[i] for g in got), min_score) for i in range(len(images))]
    candidates, found = sum(p["candidates"] for p in per), sum(p["found"] for p in per)
    ious = [v for p in per for v in p["ious"]] or [1.0]
    diffs = [v for p in per for v in p["score_diffs"]] or [0.0]
    share = found / candidates if candidates else 1.0
    result = {
        "images": int(len(images)),
        "candidates": int(candidates),
        "found": int(found),
        "found_share": share,
        "min_iou": float(min(ious)),
        "mean_iou": float(np.mean(ious)),
        "median_score_diff": float(np.median(diffs)),
        "p95_score_diff": float(np.percentile(diffs, 95)),
        "max_score_diff": float(max(diffs)),
        "min_score": min_score,
        "summary": f"{found} of PyTorch's {candidates} candidates scoring >= {min_score} found again (same class, IoU "
        f">= 0.5; mean IoU {np.mean(ious):.4f}; score differences: median {np.median(diffs):.4f}, 95th percentile "
        f"{np.percentile(diffs, 95):.4f}, largest {max(diffs):.4f})",
    }
    if share < MIN_FOUND or result["median_score_diff"] > MAX_SCORE_DIFF:
        raise EdgetuneError(
            f"Export {path}: ONNX Runtime's boxes differ from PyTorch's: {result['summary']}; at least "
            f"{100 * MIN_FOUND:.0f}% must be found, with a median score difference up to {MAX_SCORE_DIFF}. The "
            "exported graph computes something else than the trained model."
        )
    if not candidates:
        logger.warning("Export %s: PyTorch scores no candidate >= %s on the check images.", path, min_score)
    logger.info("Export checks passed: %s.", result["summary"])
    return result
