"""Images and boxes as the detector trains on them: box-aware augmentation by
torchvision.transforms.v2 on the uint8 image (tv_tensors.BoundingBoxes move with
it), then THE preprocessing (`edgetune.data.transforms.normalize`, the device's
own whole-frame resize), the boxes scaled by the same factors.

A sample's target: boxes (n, 4) in input pixels and labels (n,) for the loss;
`size` (the image's height and width) and `frame_boxes` (its boxes in its own
pixels) for validation, which measures in the image's pixels as the device does."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from edgetune.data.augment import Augment
from edgetune.data.transforms import load_rgb, normalize

MIN_BOX = 2.0  # pixels: a box an augmentation cut to a sliver is dropped (torchvision's SanitizeBoundingBoxes)


def box_ops(augment: Augment, size: tuple[int, int]) -> v2.Compose | None:
    """The augmentations of `--augment`, acting on image and boxes together."""
    ops = []
    if augment.rrc < 1.0:  # a crop of at least that share of the image, resized to the input
        ops.append(v2.RandomResizedCrop(tuple(size), scale=(augment.rrc, 1.0), ratio=(3 / 4, 4 / 3), antialias=True))
    if augment.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if augment.vflip:
        ops.append(v2.RandomVerticalFlip())
    if augment.rot90:
        ops.append(v2.RandomChoice([v2.RandomRotation((a, a), expand=True) for a in (0, 90, 180, 270)]))
    if augment.rotate:
        ops.append(v2.RandomRotation(augment.rotate))
    if augment.brightness or augment.contrast:
        ops.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    if not ops:
        return None
    return v2.Compose([*ops, v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=MIN_BOX)])


class BoxDataset(Dataset):
    """(image, target) of (path, {"boxes", "labels"}) pairs, augmented when `augment` is given."""

    def __init__(self, pairs: list, spec, augment: Augment | None = None):
        self.pairs, self.spec = pairs, spec
        self.ops = box_ops(augment, spec.size) if augment is not None else None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        path, target = self.pairs[i]
        img = load_rgb(path)
        h, w = img.shape[1:]
        frame = torch.tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        boxes, labels = frame, torch.tensor(target["labels"], dtype=torch.long).reshape(-1)
        if self.ops is not None:
            sample = self.ops(
                {
                    "image": tv_tensors.Image(img),
                    "boxes": tv_tensors.BoundingBoxes(frame, format="XYXY", canvas_size=(h, w)),
                    "labels": labels,
                }
            )
            img, boxes, labels = sample["image"].as_subclass(torch.Tensor), sample["boxes"], sample["labels"]
            boxes = boxes.as_subclass(torch.Tensor)
        H, W = img.shape[1:]
        sy, sx = self.spec.size[0] / H, self.spec.size[1] / W
        scaled = boxes.reshape(-1, 4) * torch.tensor([sx, sy, sx, sy])
        return normalize(img, self.spec), {
            "boxes": scaled,
            "labels": labels,
            "size": torch.tensor([h, w]),
            "frame_boxes": frame,
        }


def collate(batch: list) -> tuple[torch.Tensor, list[dict]]:
    """Images stacked; targets a list (one dict per image: their box counts differ)."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]


def plain(target: dict) -> dict:
    """A batch target in the image's own pixels, as the split records targets."""
    return {"boxes": target["frame_boxes"].cpu().numpy(), "labels": target["labels"].cpu().numpy()}
