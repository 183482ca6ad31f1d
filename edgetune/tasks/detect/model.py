"""The detector: FCOS-style and anchor-free (Tian et al., ICCV 2019).

    backbone  a timm CNN, `features_only` at strides 8, 16 and 32
    neck      a light FPN: a 1x1 lateral conv per level, top-down nearest
              upsampling added in, then a 3x3 conv + BN + ReLU per level
    head      per level: a tower of 3x3 conv + BN + ReLU, then three 3x3
              predictions: class logits, distances to the box's left, top, right
              and bottom (ReLU x stride: linear, so INT8 error stays linear in
              pixels), and the box's quality: its IoU with the true box, as
              the model predicts it (loss.py)

One head per level instead of FCOS's head shared across levels: a BatchNorm
shared by three levels sees three distributions in training and their mixture in
eval, and a conv shared by per-level BatchNorms cannot have them folded into it
(the INT8 export folds every BatchNorm). YOLOv8 and NanoDet-Plus keep per-level
heads for the same reason.

`forward` gives, for every location of every level (P in all), `(logits (N, P,
C), ltrb (N, P, 4) in input pixels, quality logits (N, P))`. `Decode` turns
them into the exported graph's fixed top-K candidates with plain tensor ops
(ReduceMax, ArgMax, TopK, GatherElements): no NMS in the graph."""

from __future__ import annotations

import math

import torch
from torch import nn

from edgetune.errors import EdgetuneError

STRIDES = (8, 16, 32)
# Candidates per image in the exported graph (the runtime's NMS picks from them). 300, not 100: after NMS
# the tail of lower-scoring boxes is recall that mAP counts (NEU-DET, three models: +1 to +1.8 points mAP@0.5).
TOP_K = 300
PRIOR = 0.01  # initial foreground probability of the class logits (focal loss's prior, Lin et al. 2017)


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FPN(nn.Module):
    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for c in channels
        )
        self.out = nn.ModuleList(conv_bn_relu(width, width) for _ in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [m(f) for m, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: each level gets the coarser one's upsampled sum
            lat[i] = lat[i] + nn.functional.interpolate(lat[i + 1], scale_factor=2.0, mode="nearest")
        return [m(p) for m, p in zip(self.out, lat)]


class Head(nn.Module):
    def __init__(self, width: int, num_classes: int, convs: int):
        super().__init__()
        self.tower = nn.Sequential(*(conv_bn_relu(width, width) for _ in range(convs)))
        self.cls = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box = nn.Conv2d(width, 4, 3, padding=1)
        self.ctr = nn.Conv2d(width, 1, 3, padding=1)  # the quality; named for FCOS's centerness in saved weights
        for m in (self.cls, self.box, self.ctr):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, x: torch.Tensor):
        t = self.tower(x)
        return self.cls(t), self.box(t), self.ctr(t)


def grid(size: tuple[int, int], strides=STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """The (P, 2) x, y centres of every level's locations, level by level, row by
    row (FCOS's stride // 2 offset), and each one's stride (P,)."""
    points, steps = [], []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(size[0] // s), torch.arange(size[1] // s), indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * s + s // 2)
        steps.append(torch.full((len(points[-1]),), float(s)))
    return torch.cat(points), torch.cat(steps)


class Detector(nn.Module):
    def __init__(self, backbone: nn.Module, channels: list[int], num_classes: int, size, width=64, convs=2):
        super().__init__()
        self.backbone, self.neck = backbone, FPN(channels, width)
        self.head = nn.ModuleList(Head(width, num_classes, convs) for _ in STRIDES)
        self.size, self.num_classes = (int(size[0]), int(size[1])), num_classes
        # plain tensors, not buffers: fixed by the input size, never saved, constants in the export
        self.points, self.point_strides = grid(self.size)
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", None) or {}  # preprocessing comes from the backbone

    def forward(self, x: torch.Tensor):
        feats = self.neck(self.backbone(x))
        cls, box, ctr = [], [], []
        for f, head, s in zip(feats, self.head, STRIDES):
            if tuple(f.shape[-2:]) != (self.size[0] // s, self.size[1] // s):
                raise EdgetuneError(
                    f"The detector was built for {self.size[0]}x{self.size[1]} inputs; it got {tuple(x.shape[-2:])}."
                )
            c, b, t = head(f)
            cls.append(c.permute(0, 2, 3, 1).flatten(1, 2))
            box.append((nn.functional.relu(b) * float(s)).permute(0, 2, 3, 1).flatten(1, 2))
            ctr.append(t.flatten(1))
        return torch.cat(cls, 1), torch.cat(box, 1), torch.cat(ctr, 1)

    def group_matcher(self, coarse: bool = False):
        """Parameter groups from the stem to the head for --freeze and --layer-decay:
        the backbone's stages, then the neck and heads together (new for the task)."""
        from edgetune.models.freeze import backbone_stages

        return backbone_stages(self.backbone, "backbone")

    def prediction_layers(self) -> list[str]:
        return [f"head.{i}.{p}" for i in range(len(STRIDES)) for p in ("cls", "box", "ctr")]


def candidates(size) -> int:
    """The candidates per image the graph gives: TOP_K, or every location of a small input."""
    return min(TOP_K, sum((size[0] // s) * (size[1] // s) for s in STRIDES))


def boxes_from(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Distances to the sides from each point -> x1, y1, x2, y2."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)


class Decode(nn.Module):
    """The detector with the graph's decoding: each location's best class and its
    score sqrt(sigmoid(logit) x sigmoid(quality)), the image's `top_k` best
    locations, their boxes clipped to the input. Outputs boxes (N, K, 4), scores
    (N, K), classes (N, K) as float32: whole numbers, and every runtime's session
    reads float32 outputs (edgetune's TensorRT session copies every output back as
    float32)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.top_k = candidates(model.size)

    def forward(self, x: torch.Tensor):
        cls, ltrb, ctr = self.model(x)
        return decode(cls, ltrb, ctr, self.model.points.to(x.device), self.model.size, self.top_k)


def decode(cls, ltrb, ctr, points, size, top_k: int):
    scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr).unsqueeze(-1))
    best, label = scores.max(-1)
    top, idx = torch.topk(best, top_k, dim=1)
    boxes = boxes_from(points.unsqueeze(0), ltrb)
    h, w = size
    limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    picked = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return picked, top, torch.gather(label, 1, idx).float()


def feature_indices(name: str) -> list[int]:
    """The `features_only` indices of `name`'s stride 8, 16 and 32 features."""
    import timm

    if not timm.is_model(name):
        raise EdgetuneError(f"--model {name}: not a timm model name. See timm.list_models().")
    try:
        info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    except RuntimeError as e:  # e.g. a ViT, which has no features_only form
        raise EdgetuneError(f"--model {name}: timm cannot give its multi-scale features ({e}). Choose a CNN.") from None
    reductions = info.reduction()
    found = [reductions.index(s) for s in STRIDES if s in reductions]
    if len(found) != len(STRIDES):
        raise EdgetuneError(
            f"--model {name}: a detector needs features at strides {', '.join(map(str, STRIDES))}; {name} gives "
            f"{', '.join(map(str, reductions))}. Choose a CNN backbone (EfficientNet, MobileNet, ResNet, ConvNeXt)."
        )
    return found


def create_detector(name: str, classes: list[str], size, pretrained=True, weights=None, width=64, convs=2):
    from edgetune.models.backbone import create_features

    backbone = create_features(name, feature_indices(name), pretrained, weights)
    return Detector(backbone, backbone.feature_info.channels(), len(classes), size, width, convs)
