"""The device's path (OpenCV decode + the manifest's preprocessing + the runtime)
against training's (PIL decode + EvalTransform, which calls the same preprocessing,
+ PyTorch)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edgetune.data.transforms import EvalTransform, load_rgb
from edgetune.run import load_run
from edgetune.runtime.bundle import load_bundle
from edgetune.runtime.preprocess import PreprocessSpec, preprocess, read_image
from edgetune.tasks.classification.metrics import agreement

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def parity_images(tmp_path_factory):
    """Colour and grayscale files, smaller and larger than the model input, odd sizes."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("parity")
    paths = []
    for i, (h, w, gray) in enumerate(
        [(48, 48, False), (20, 30, False), (300, 300, True), (57, 75, False), (33, 64, True)]
    ):
        img = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (3, 3), 0)  # some structure, still every value used
        path = root / f"img{i}.png"
        cv2.imwrite(str(path), img)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size,resize_dtype", [((32, 32), "uint8"), ((64, 48), "uint8"), ((64, 48), "float32")])
def test_runtime_preprocessing_matches_training(parity_images, interpolation, size, resize_dtype):
    """Training decodes with PIL and hands RGB tensors to the same preprocessing
    function: decoding, channel order and layout must agree (the resize itself is
    checked against an independent one below)."""
    spec = PreprocessSpec(size=size, mean=MEAN, std=STD, interpolation=interpolation, resize_dtype=resize_dtype)
    device = preprocess([read_image(p) for p in parity_images], spec)
    training = torch.stack([EvalTransform(spec)(load_rgb(p)) for p in parity_images]).numpy()
    assert device.shape == training.shape == (len(parity_images), 3, *size)
    assert float(np.abs(device - training).max()) <= 1e-5


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(224, 224), (57, 75)])
def test_uint8_resize_is_a_float_resize_rounded(interpolation, size):
    """The frame is resized in uint8 (fast, and training does the same): against an
    independent float resize (torch) the difference is rounding: under one grey
    level, and on average under a sixth of one (OpenCV's fixed-point bilinear rounds
    down by 0.1). The other interpolation is 3.6 grey levels off, a wrong channel
    order 150."""
    rng = np.random.default_rng(5)
    frame = cv2.resize(
        rng.integers(40, 216, (60, 80, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC
    )  # smooth parts, no flat areas
    spec = PreprocessSpec(size=size, mean=MEAN, std=STD, interpolation=interpolation)
    device = preprocess(frame, spec)[0]
    rgb = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    ref = torch.nn.functional.interpolate(rgb, size=spec.size, mode=interpolation, align_corners=False)[0]
    ref = ((ref - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)).numpy()
    grey_levels = (device - ref) * np.asarray(STD)[:, None, None] * 255.0
    assert np.abs(grey_levels).max() <= 1.0
    assert abs(float(grey_levels.mean())) < 0.15
    # A run written before resize_dtype existed was trained on a float resize, and keeps it.
    legacy = PreprocessSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "resize_dtype"})
    assert legacy.resize_dtype == "float32"
    assert float(np.abs(preprocess(frame, legacy)[0] - ref).max()) <= 1e-4  # float rounding only


def _pytorch_logits(run, paths):
    model = run.build_model()
    with torch.no_grad():
        return model(torch.stack([EvalTransform(run.spec)(load_rgb(p)) for p in paths])).numpy()


@pytest.mark.slow
def test_full_runtime_path_agrees_with_pytorch(cpu_bundle):
    """OpenCV + the manifest's preprocessing + ONNX Runtime (INT8) vs PyTorch on the
    source run's model, on the test split: the same top-1 for >= 99%."""
    bundle = load_bundle(cpu_bundle)
    run = load_run(bundle.source_run)
    paths = [p for p, _ in run.split.parts["test"]]
    device = bundle.open().run_frames([read_image(p) for p in paths])
    assert agreement(device, _pytorch_logits(run, paths)) >= 0.99


@pytest.mark.slow
def test_openvino_built_in_preprocessing_matches_onnx_path(cpu_bundle, intel_bundle):
    """Raw uint8 frames of another size: the IR's own preprocessing (what an OpenVINO
    application runs) and the session's OpenCV path give the ONNX path's top-1."""
    run = load_run(load_bundle(cpu_bundle).source_run)
    frames = [cv2.resize(read_image(p), (75, 57), interpolation=cv2.INTER_AREA) for p, _ in run.split.parts["test"]]
    onnx_path = load_bundle(cpu_bundle).open().run_frames(frames)
    intel = load_bundle(intel_bundle).open()
    built_in = intel.run_frames_built_in(frames)
    opencv = intel.run_frames(frames)
    assert built_in.shape == opencv.shape == onnx_path.shape == (len(frames), len(run.classes))
    assert agreement(built_in, onnx_path) == 1.0
    assert agreement(built_in, opencv) == 1.0
    np.testing.assert_array_equal(
        opencv, intel.run(preprocess(frames, intel.spec))
    )  # run_frames = OpenCV preprocessing + run
    mixed = intel.run_frames_built_in([frames[0], cv2.resize(frames[1], (40, 90))])  # different sizes in one call
    assert mixed.shape == (2, len(run.classes))
