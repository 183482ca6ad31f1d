"""Training-side preprocessing and augmentation, in torch.

Images are decoded with PIL; the resize + normalise step is the device's own
(`edgetune.runtime.preprocess`), so training sees the numbers the device computes.
Augmentations act on the uint8 image before that step."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from edgetune.data.augment import Augment
from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import PreprocessSpec, preprocess


def load_rgb(path: str) -> torch.Tensor:
    """uint8 3xHxW RGB tensor; grayscale becomes 3 channels."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def normalize(img_u8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 3xHxW RGB to the model's float input, by the device's own `preprocess`."""
    hwc = np.ascontiguousarray(img_u8.permute(1, 2, 0).numpy())
    return torch.from_numpy(preprocess(hwc, spec, frame_order="RGB")[0])


def augment_ops(augment: Augment) -> v2.Compose:
    if augment.mosaic:
        raise EdgetuneError(
            f"--augment mosaic={augment.mosaic:g}: mosaic combines four images and their boxes, so only "
            "--task detect takes it. Leave it out of --augment (or the config's augment) for this task."
        )
    ops = []
    if augment.rrc < 1.0:
        ops.append(
            v2.RandomResizedCrop(size=1, scale=(augment.rrc, 1.0), ratio=(0.9, 1.1))
        )  # size set by TrainTransform
    if augment.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if augment.vflip:
        ops.append(v2.RandomVerticalFlip())
    if augment.rotate:
        ops.append(v2.RandomRotation(augment.rotate))
    if augment.brightness or augment.contrast:
        ops.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    return v2.Compose(ops or [v2.Identity()])  # Compose refuses an empty list (--augment none)


class TrainTransform:
    def __init__(self, spec: PreprocessSpec, augment: Augment):
        self.spec, self.augment = spec, augment
        self.ops = augment_ops(augment)
        # Crop in the source image's own resolution, then the shared resize.
        for op in self.ops.transforms:
            if isinstance(op, v2.RandomResizedCrop):
                op.size = tuple(spec.size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = self.ops(img)
        if self.augment.rot90:
            img = torch.rot90(img, int(torch.randint(4, ())), dims=(1, 2))
        return normalize(img, self.spec)


class EvalTransform:
    def __init__(self, spec: PreprocessSpec):
        self.spec = spec

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return normalize(img, self.spec)
