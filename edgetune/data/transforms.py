"""Training-side preprocessing and augmentation, in torch.

`eval_transform` implements the run's `PreprocessSpec` with PIL decoding and torch
interpolation: an independent twin of the device's OpenCV path
(`edgetune.runtime.preprocess`), held to it by a parity test. Augmentations act on
the uint8 image before that shared resize + normalise step."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from edgetune.data.augment import Augment
from edgetune.runtime.preprocess import PreprocessSpec


def load_rgb(path: str) -> torch.Tensor:
    """uint8 3xHxW RGB tensor; grayscale becomes 3 channels."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def normalize(img_u8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (N)x3xHxW RGB to the model's float input: resize + scale + normalise."""
    x = img_u8.float().div(255.0)
    batched = x.dim() == 4
    if not batched:
        x = x.unsqueeze(0)
    if spec.channel_order == "BGR":
        x = x.flip(1)
    if tuple(x.shape[-2:]) != tuple(spec.size):
        x = F.interpolate(x, size=tuple(spec.size), mode=spec.interpolation, align_corners=False if spec.interpolation != "nearest" else None, antialias=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x if batched else x[0]


def augment_ops(augment: Augment) -> v2.Compose:
    ops = []
    if augment.rrc < 1.0:
        ops.append(v2.RandomResizedCrop(size=1, scale=(augment.rrc, 1.0), ratio=(0.9, 1.1)))  # size set by TrainTransform
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
