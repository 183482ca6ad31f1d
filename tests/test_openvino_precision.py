"""OpenVINO runs each artifact in the precision it is named for: fp32 in f32 even on
a CPU whose default is bf16, bf16 only where the CPU computes in bf16."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgetune.data.transforms import EvalTransform, load_rgb
from edgetune.errors import EdgetuneError
from edgetune.run import load_run
from edgetune.runtime.bundle import load_bundle
from edgetune.runtime.ov import has_bf16
from edgetune.runtime.preprocess import read_image
from edgetune.targets.base import CompileInput
from edgetune.targets.profile import load_profile
from edgetune.targets.registry import get_target
from edgetune.tasks.classification.metrics import agreement


@pytest.fixture(scope="module")
def ov_fp32(fp32_bundle, tmp_path_factory):
    """The intel target's fp32 (and, on a bf16 CPU, bf16) artifacts of the float run,
    compiled from the same ONNX as `fp32_bundle`; with the run's images and PyTorch logits."""
    bundle = load_bundle(fp32_bundle)
    run = load_run(bundle.source_run)
    # the intel profile with fp32 as its main precision and bf16 as its fallback
    target = get_target(dataclasses.replace(load_profile("intel"), precision="fp32", fallback=("bf16",)))
    dest = tmp_path_factory.mktemp("ov")
    arts = target.compile(
        CompileInput(
            {"fp32": bundle.artifact_path("fp32")}, run.classes, run.spec, "input", bundle.manifest["input"]["shape"]
        ),
        dest,
    )
    paths = [p for part in run.split.parts.values() for p, _ in part]
    with torch.no_grad():
        reference = run.build_model()(torch.stack([EvalTransform(run.spec)(load_rgb(p)) for p in paths])).numpy()
    return target, dest, arts, run, [read_image(p) for p in paths], reference


def test_fp32_artifact_runs_in_f32_and_agrees_with_pytorch(ov_fp32):
    target, dest, arts, run, frames, reference = ov_fp32
    session = target.load(dest, arts["fp32"], run.spec, threads=1)
    assert session.inference_precision == "fp32"  # read back from the compiled model
    logits = session.run_frames(frames)
    assert len(frames) >= 50 and agreement(logits, reference) >= 0.999
    # f32 holds the logits to float rounding; bf16 (8-bit mantissa) would be off by ~1%.
    assert float(np.abs(logits - reference).max()) <= 1e-4 * max(1.0, float(np.abs(reference).max()))


def test_bf16_artifact_only_where_the_cpu_has_bf16(ov_fp32):
    import openvino as ov

    target, dest, arts, run, frames, reference = ov_fp32
    if not has_bf16(ov.Core()):
        assert "bf16" not in arts  # a fallback this machine cannot evaluate is left out
        with pytest.raises(EdgetuneError, match="bf16.*AVX512_BF16 or AMX.*--precision fp32"):
            target.load(dest, {**arts["fp32"], "precision": "bf16"}, run.spec)
        return
    assert arts["bf16"]["files"] == arts["fp32"]["files"]  # the same IR, another inference precision
    session = target.load(dest, arts["bf16"], run.spec, threads=1)
    assert session.inference_precision == "bf16"
    logits = session.run_frames(frames)
    assert float(np.abs(logits - reference).max()) > 1e-4 * max(
        1.0, float(np.abs(reference).max())
    )  # really computed in bf16
