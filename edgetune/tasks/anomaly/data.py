"""The anomaly task's data beyond class labels: a data set with pixel masks (the
layouts of `edgetune.data.masks`) read as classes of images, and the true masks
that pixel-level evaluation scores the heat maps against.

In the class-folder layout (MT_<Class>/Imgs/NAME.jpg + NAME.png) each folder is a
class, as in a plain class-folder source, the masks beside the images left out of
the images; in the images + masks layout an image is `good` where its mask is
empty, else `defect`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune.data.sources import Item, Source

GOOD, DEFECT = "good", "defect"


def mask_layout_source(spec: str, normal: str | None) -> Source:
    """Images with masks as a class-labelled source (see the module's doc)."""
    from edgetune.data.masks import load_mask_source

    masks = load_mask_source(spec, background=normal)
    folders = any(i.target.get("class") is not None for i in masks.items)
    names = [i.stratum if folders else (GOOD if i.group == masks.classes[0] else DEFECT) for i in masks.items]
    classes = sorted(set(names))
    items = [Item(i.path, classes.index(n), i.stratum) for i, n in zip(masks.items, names)]
    return Source(spec, classes, items, masks.skipped, root=masks.root)


def truth_mask(image: str | Path) -> Path | None:
    """The mask of `image` where the data set has one: NAME.png beside it, or
    DATA/masks/NAME.png for DATA/images/NAME.ext."""
    from edgetune.data.masks import MASK_SUFFIX

    image = Path(image)
    for mask in (image.with_suffix(MASK_SUFFIX), image.parent.parent / "masks" / (image.stem + MASK_SUFFIX)):
        if mask != image and mask.is_file() and (mask.parent != image.parent or image.suffix.lower() != MASK_SUFFIX):
            return mask
    return None


def truth_masks(paths: list[str], anomalous: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """(N, H, W) binary masks at the network's input `size` (the whole frame resized,
    as the heat map is): a normal image without a mask is all normal; None where an
    anomalous image has no mask (pixel metrics need every defect's extent)."""
    import cv2

    from edgetune.data.masks import read_mask

    h, w = size
    out = np.zeros((len(paths), h, w), np.uint8)
    for i, (path, bad) in enumerate(zip(paths, anomalous)):
        mask = truth_mask(path)
        if mask is None:
            if bad:
                return None
            continue
        m = (read_mask(mask) > 0).astype(np.uint8)
        out[i] = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    return out
