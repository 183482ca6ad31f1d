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


def _defect_image(rng, size: int, kind: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a dark stroke ("stroke"), a bright blob ("blob") or neither; and its 0/1 mask."""
    img = rng.normal(150, 20, (size, size)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if kind == "stroke":
        a, b = rng.integers(size // 8, size - size // 8, (2, 2))
        for target, value in ((img, 30), (mask, 1)):
            cv2.line(target, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), value, max(3, size // 16))
    elif kind == "blob":
        c, r = rng.integers(size // 5, size - size // 5, 2), int(rng.integers(size // 12, size // 7))
        for target, value in ((img, 245), (mask, 1)):
            cv2.circle(target, (int(c[0]), int(c[1])), max(r, 3), value, -1)
    return img, mask


def make_masked_images(root: Path, n: int = 12, size: int = 64, layout: str = "folders", seed: int = 0) -> Path:
    """Generated images with pixel masks: dark strokes ("crack") and bright blobs
    ("blob") on noise. `layout` "folders": root/Crack, root/Blob, root/Free, each image
    NAME.jpg with its mask NAME.png beside it (255 on the defect; Free's masks empty);
    "paired": root/images/*.png, root/masks/*.png holding class indices (an image may
    show both), root/classes.txt. `n` images per folder (paired: 3n in all)."""
    rng = np.random.default_rng(seed)
    if layout == "folders":
        for folder, kind in (("Crack", "stroke"), ("Blob", "blob"), ("Free", None)):
            (root / folder / "Imgs").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, mask = _defect_image(rng, size, kind)
                cv2.imwrite(
                    str(root / folder / "Imgs" / f"{folder.lower()}_{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95]
                )
                cv2.imwrite(str(root / folder / "Imgs" / f"{folder.lower()}_{i:03d}.png"), mask * 255)
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\ncrack\nblob\n")
    for i in range(3 * n):
        img, stroke = _defect_image(rng, size, "stroke" if i % 3 != 2 else None)
        blob_img, blob = _defect_image(rng, size, "blob" if i % 3 != 0 else None)
        img[blob > 0] = blob_img[blob > 0]
        mask = np.where(blob > 0, 2, stroke).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"part_{i:03d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"part_{i:03d}.png"), mask)
    return root
