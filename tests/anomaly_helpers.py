"""Generated textures for the anomaly tests: normal = noise on a regular grid,
anomalous = the same with a bright scratch or blob (its mask kept)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = 64


def texture(rng, size: int = SIZE) -> np.ndarray:
    img = rng.normal(128, 12, (size, size)).astype(np.float32)
    off = int(rng.integers(0, 8))
    img[:, off::8] -= 50
    img[off::8, :] -= 50
    return img


def draw_defect(rng, img: np.ndarray) -> np.ndarray:
    """A bright scratch or blob; returns its mask."""
    mask = np.zeros(img.shape, np.uint8)
    if rng.random() < 0.5:
        x0, y0 = (int(v) for v in rng.integers(8, SIZE - 24, 2))
        angle, length = rng.uniform(0, np.pi), int(rng.integers(12, 20))
        end = (int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle)))
        for target, value in ((img, 255), (mask, 1)):
            cv2.line(target, (x0, y0), end, value, 2)
    else:
        centre, radius = tuple(int(v) for v in rng.integers(12, SIZE - 12, 2)), int(rng.integers(4, 7))
        for target, value in ((img, 230), (mask, 1)):
            cv2.circle(target, centre, radius, value, -1)
    return mask


def make_textures(root: Path, n_good: int = 60, n_bad: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """root/good, root/bad; returns each defect's mask by resolved path."""
    rng = np.random.default_rng(seed)
    masks = {}
    for cls, n in (("good", n_good), ("bad", n_bad)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = texture(rng)
            path = root / cls / f"{cls}_{i:03d}.png"
            if cls == "bad":
                masks[str(path.resolve())] = draw_defect(rng, img)
            cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return masks


def quantization_record(manifest: dict) -> tuple[dict, dict]:
    """A bundle manifest's export records (by variant) and its PTQ record."""
    exported = next(r for r in manifest["stages"] if r["stage"] == "export")["metrics"]
    return exported, next(v["quantization"] for v in exported.values() if v.get("quantization"))
