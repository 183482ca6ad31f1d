"""The segmentation network: a timm CNN backbone's feature maps at strides 4, 8,
16 and 32 (`features_only`, ImageNet weights as for the classifier) and a light
FPN decoder: each map projected to `width` channels (1x1 conv), merged top-down
(nearest x2 and add) down to stride 4, one 3x3 conv, a 1x1 class head, and the
logits upsampled x4 (bilinear) to the input size. Every resize is a constant
scale, so the graph holds plain Resize ops that ONNX Runtime, OpenVINO and
TensorRT all run; the input side must be a multiple of 32.

`MaskOutputs` is what the export traces: the logits' argmax as a uint8 class map
(`mask`) and the largest probability of any pixel not being background
(`defect_score`, the image-level score)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgetune.errors import EdgetuneError

FEATURES = [1, 2, 3, 4]  # timm's feature indices at strides 4, 8, 16, 32
STRIDE = 32  # the input side must be a multiple of the coarsest stride
WIDTH = 64  # the decoder's channels
HEAD = "head"  # the prediction layer (pruning keeps it)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SegmentationNet(nn.Module):
    def __init__(self, features: nn.Module, channels: list[int], n_classes: int, width: int = WIDTH):
        super().__init__()
        self.features = features
        self.lateral = nn.ModuleList(conv_bn_relu(c, width, 1) for c in channels)
        self.fuse = conv_bn_relu(width, width, 3)
        self.head = nn.Conv2d(width, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        y = self.lateral[-1](feats[-1])
        for f, lateral in zip(reversed(feats[:-1]), reversed(list(self.lateral)[:-1])):
            y = lateral(f) + F.interpolate(y, scale_factor=2.0, mode="nearest")
        logits = self.head(self.fuse(y))
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)

    def group_matcher(self, coarse: bool = False):
        """Parameter groups from the stem to the head for --freeze and --layer-decay:
        the backbone's stages, the decoder last."""
        from edgetune.models.freeze import backbone_stages

        return backbone_stages(self.features, "features")


def build_segmenter(name: str, n_classes: int, pretrained: bool, weights=None, width: int = WIDTH) -> nn.Module:
    import timm

    from edgetune.models.backbone import create_backbone, create_features

    if not timm.is_model(name):
        create_backbone(name, None, pretrained=False)  # names the unknown model and similar ones
    try:
        features = create_features(name, FEATURES, pretrained, weights)
    except EdgetuneError:
        raise
    except Exception as e:  # a timm model without feature maps at these strides (a ViT, say)
        raise EdgetuneError(
            f"--model {name} cannot give the feature maps at strides 4, 8, 16 and 32 a segmentation decoder needs "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Use a CNN backbone: EfficientNet, "
            "ResNet, MobileNet, ConvNeXt."
        ) from None
    reductions = list(features.feature_info.reduction())
    if reductions != [4, 8, 16, 32]:
        raise EdgetuneError(
            f"--model {name}: its feature maps come at strides {reductions}, not 4, 8, 16, 32. Use a CNN backbone "
            "such as efficientnet_lite0 or resnet18."
        )
    return SegmentationNet(features, list(features.feature_info.channels()), n_classes, width)


class MaskOutputs(nn.Module):
    """The exported graph: class map (uint8) and image-level defect score."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        mask = logits.argmax(dim=1).to(torch.uint8)
        defect = 1.0 - torch.softmax(logits, dim=1)[:, 0]
        return mask, defect.flatten(1).amax(dim=1)
