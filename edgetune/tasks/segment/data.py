"""The training side's images and masks: mask-aware augmentation on the uint8
image (torchvision.transforms.v2, the mask a tv_tensors.Mask, so geometric ops move
it by nearest neighbour and colour ops leave it alone), then the one preprocessing
(`edgetune.data.transforms.normalize`: the whole frame resized as on the device)
and the mask resized to the network's size by nearest neighbour."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from edgetune.data.augment import Augment
from edgetune.data.masks import read_label
from edgetune.data.transforms import augment_ops, load_rgb, normalize


class MaskDataset(Dataset):
    """(image, mask) pairs: a float CHW input and a uint8 HxW class map, both at the
    network's size. `augment`: training's random changes (None: none)."""

    def __init__(self, pairs: list, spec, augment: Augment | None = None):
        self.pairs, self.spec, self.augment = pairs, spec, augment
        self.ops = None
        if augment is not None:
            from torchvision.transforms import v2

            self.ops = augment_ops(augment)
            for op in self.ops.transforms:  # crop in the image's own resolution, to the network's size
                if isinstance(op, v2.RandomResizedCrop):
                    op.size = tuple(spec.size)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        import cv2
        from torchvision import tv_tensors

        path, target = self.pairs[i]
        img = load_rgb(path)
        label = torch.from_numpy(read_label(target, img.shape[1:]))
        if self.ops is not None:
            img, label = self.ops(tv_tensors.Image(img), tv_tensors.Mask(label))
            if self.augment.rot90:
                k = int(torch.randint(4, ()))
                img, label = torch.rot90(img, k, dims=(1, 2)), torch.rot90(label, k, dims=(0, 1))
        x = normalize(img.as_subclass(torch.Tensor).contiguous(), self.spec)
        h, w = self.spec.size
        y = np.ascontiguousarray(label.as_subclass(torch.Tensor).numpy(), dtype=np.uint8)
        y = cv2.resize(y, (w, h), interpolation=cv2.INTER_NEAREST) if y.shape != (h, w) else y
        return x, torch.from_numpy(y)
