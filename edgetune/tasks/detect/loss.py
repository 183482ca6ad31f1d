"""FCOS's targets and loss, from torchvision's well-kept pieces.

Assignment (Tian et al. 2019, with FCOS v2's centre sampling): a location is a
positive of a box when it lies within `RADIUS` strides of the box's centre (and
inside the box), and the largest of its distances to the box's sides is within
its level's size range: up to 8 strides, from 4 strides on the levels above the
first (FCOS's 64 and 128 pixels at strides 8 and 16). The ranges are in strides,
not scaled to the input size: scaled, a 64-pixel input put 12-25 pixel boxes on the
stride-32 level, where no location lies near their centres (0 to 2 positives per
image, nothing learnt). A location two boxes claim learns the smaller box.

Loss: sigmoid focal loss over every location and class (`torchvision.ops.
sigmoid_focal_loss`), generalized IoU of the positives' boxes weighted by their
centerness (`generalized_box_iou_loss`), and binary cross-entropy of the third
output against the IoU of the positive's predicted box with its true box; the
first and last per positive, the box term per unit of centerness.

The third output learns that IoU, not FCOS's centerness, so that the score,
sqrt(class x it), ranks a box by how well it fits (IoU-aware RetinaNet,
VarifocalNet and GFL score boxes so). On NEU-DET it and FCOS's centerness scored
level, draw for draw at the same seed (docs/detection.md)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from edgetune.tasks.detect.model import STRIDES, boxes_from

RADIUS = 1.5
REACH = 8  # a level's boxes reach up to this many of its strides from a location (FCOS's ranges)


def size_ranges(point_strides: torch.Tensor) -> torch.Tensor:
    """(P, 2): the range of a positive's largest side distance at each location's level."""
    edges = [0.0, *(REACH * s for s in STRIDES[:-1]), float("inf")]
    lo = torch.empty_like(point_strides)
    hi = torch.empty_like(point_strides)
    for level, s in enumerate(STRIDES):
        at = point_strides == s
        lo[at], hi[at] = edges[level], edges[level + 1]
    return torch.stack([lo, hi], 1)


def assign(points, point_strides, ranges, boxes, labels, num_classes: int):
    """One image: each location's class (num_classes: background) and its box's
    side distances (P, 4)."""
    n = len(points)
    if len(boxes) == 0:
        return torch.full((n,), num_classes, dtype=torch.long, device=points.device), points.new_zeros(n, 4)
    x, y = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)  # (P, G, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = point_strides[:, None] * RADIUS
    near = (
        (x > torch.maximum(cx - r, boxes[:, 0]))
        & (x < torch.minimum(cx + r, boxes[:, 2]))
        & (y > torch.maximum(cy - r, boxes[:, 1]))
        & (y < torch.minimum(cy + r, boxes[:, 3]))
    )
    reach = ltrb.max(-1).values
    fits = (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n, -1)
    area = torch.where(near & fits, area, torch.full_like(area, float("inf")))
    smallest, which = area.min(1)
    cls = labels[which].clone()
    cls[torch.isinf(smallest)] = num_classes
    return cls, ltrb[torch.arange(n, device=points.device), which]


def centerness(ltrb: torch.Tensor) -> torch.Tensor:
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = lr.min(1).values / lr.max(1).values.clamp(min=1e-6) * tb.min(1).values / tb.max(1).values.clamp(min=1e-6)
    return ratio.clamp(min=0).sqrt()


def side_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of two boxes given by their side distances from the same location."""
    w = (torch.minimum(a[:, 0], b[:, 0]) + torch.minimum(a[:, 2], b[:, 2])).clamp(min=0)
    h = (torch.minimum(a[:, 1], b[:, 1]) + torch.minimum(a[:, 3], b[:, 3])).clamp(min=0)
    area_a, area_b = (a[:, 0] + a[:, 2]) * (a[:, 1] + a[:, 3]), (b[:, 0] + b[:, 2]) * (b[:, 1] + b[:, 3])
    return w * h / (area_a + area_b - w * h).clamp(min=1e-6)


class FCOSLoss:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def targets(self, model, targets: list[dict], device):
        points, strides = model.points.to(device), model.point_strides.to(device)
        ranges = size_ranges(strides)
        cls, box = zip(*(assign(points, strides, ranges, t["boxes"], t["labels"], self.num_classes) for t in targets))
        return torch.stack(cls), torch.stack(box), points

    def __call__(self, model, outputs, targets: list[dict]) -> torch.Tensor:
        """The loss of a batch; `model`: the detector (its locations), unwrapped."""
        logits, ltrb, quality = outputs
        cls_t, box_t, points = self.targets(model, targets, logits.device)
        pos = cls_t < self.num_classes
        n_pos = pos.sum().clamp(min=1).float()
        onehot = nn.functional.one_hot(cls_t, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        loss_cls = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / n_pos
        if not pos.any():
            return loss_cls + 0.0 * (ltrb.sum() + quality.sum())  # every output stays in the graph (DDP)
        p = points.unsqueeze(0).expand(len(cls_t), -1, -1)[pos]
        ctr_t = centerness(box_t[pos])
        giou = generalized_box_iou_loss(boxes_from(p, ltrb[pos]), boxes_from(p, box_t[pos]), reduction="none")
        loss_box = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        iou_t = side_iou(ltrb[pos].detach(), box_t[pos])  # a target, not a path for the box's gradient
        loss_quality = nn.functional.binary_cross_entropy_with_logits(quality[pos], iou_t, reduction="sum") / n_pos
        return loss_cls + loss_box + loss_quality
