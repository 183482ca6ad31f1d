"""Generated labelled images: a folder a tiny model learns in seconds, for the
test suite and the benchmarks' smoke runs (no data set to download)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_images(
    root: Path, n_per_class: int = 30, size: int = 48, classes=("ok", "defect"), seed: int = 0, gray: bool = False
) -> Path:
    """A folder of class sub-folders whose classes a tiny model can tell apart:
    'defect' images carry a dark diagonal crack on a noisy bright cell."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.normal(170, 25, (size, size)).clip(0, 255).astype(np.uint8)
            if c % 2 == 1:
                off = int(rng.integers(-size // 4, size // 4))
                cv2.line(img, (0, size // 2 + off), (size - 1, size // 2 - off), 20, max(2, size // 12))
            if c >= 2:
                cv2.circle(img, (size // 2, size // 2), size // 5, 250, -1)
            if not gray:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                img[..., 0] = np.clip(img[..., 0].astype(int) + 30 * c, 0, 255)
            cv2.imwrite(str(d / f"{name}_{i:03d}.png"), img)
    return root
