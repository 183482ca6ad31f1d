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
MOSAIC_CROP = (0.25, 0.5)  # the share of a 2x2 mosaic's area its crop keeps: one to two images' worth


def box_ops(augment: Augment, size: tuple[int, int], crop: tuple[float, float] | None = None) -> v2.Compose | None:
    """The augmentations of `--augment`, acting on image and boxes together. `crop`:
    the range of the image's area a crop keeps (default: `rrc`'s, none at 1.0)."""
    ops = []
    crop = crop or ((augment.rrc, 1.0) if augment.rrc < 1.0 else None)
    if crop:  # a crop of that share of the image, resized to the input
        ops.append(v2.RandomResizedCrop(tuple(size), scale=crop, ratio=(3 / 4, 4 / 3), antialias=True))
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
    """(image, target) of (path, {"boxes", "labels"}) pairs, augmented when `augment` is given.

    `mosaic=P` (YOLO's mosaic, Bochkovskiy et al. 2020): a share P of the training
    samples is four images, this one and three drawn at random, side by side in a
    2x2 grid, of which a crop of a quarter to half the grid's area is the sample.
    Its parts appear at 0.7-1.0x their own scale, cut at other places, with more boxes
    and more contexts per sample than a single image gives."""

    def __init__(self, pairs: list, spec, augment: Augment | None = None):
        self.pairs, self.spec = pairs, spec
        self.ops = box_ops(augment, spec.size) if augment is not None else None
        self.mosaic = augment.mosaic if augment is not None else 0.0
        self.mosaic_ops = box_ops(augment, spec.size, crop=MOSAIC_CROP) if self.mosaic else None

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        path, target = self.pairs[i]
        boxes = torch.tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        return load_rgb(path), boxes, torch.tensor(target["labels"], dtype=torch.long).reshape(-1)

    def _mosaic(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image i top left and three random others, each resized to image i's size."""
        img, boxes, labels = self._load(i)
        h, w = img.shape[1:]
        canvas = img.new_zeros(3, 2 * h, 2 * w)
        parts = [(img, boxes, labels)] + [self._load(int(j)) for j in torch.randint(len(self.pairs), (3,))]
        all_boxes, all_labels = [], []
        for k, (im, b, lab) in enumerate(parts):
            ih, iw = im.shape[1:]
            if (ih, iw) != (h, w):
                im = v2.functional.resize(im, [h, w], antialias=True)
                b = b * torch.tensor([w / iw, h / ih, w / iw, h / ih])
            y, x = (k // 2) * h, (k % 2) * w
            canvas[:, y : y + h, x : x + w] = im
            all_boxes.append(b + torch.tensor([x, y, x, y], dtype=torch.float32))
            all_labels.append(lab)
        return canvas, torch.cat(all_boxes), torch.cat(all_labels)

    def __getitem__(self, i: int):
        mosaic = self.mosaic > 0 and float(torch.rand(())) < self.mosaic
        img, frame, labels = self._mosaic(i) if mosaic else self._load(i)
        h, w = img.shape[1:]
        boxes, ops = frame, self.mosaic_ops if mosaic else self.ops
        if ops is not None:
            sample = ops(
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
