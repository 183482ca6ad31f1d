"""`cpu`: ONNX Runtime on any x86-64/ARM64 box. The Q/DQ INT8 ONNX and the FP32
fallback, each graph-optimised offline by ONNX Runtime itself (constant folding,
Q/DQ and operator fusions). Layout-specific optimisations are left to load time
on the device, because they depend on its CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.runtime.files import atomic_path
from edgetune.runtime.ort import GRAPH_LEVELS, session_options
from edgetune.targets.base import CompileInput, Target, int_at_least

logger = log.get(__name__)
OFFLINE_LEVEL = "extended"  # portable across CPUs; "all" adds layout transforms for this machine's CPU


class CpuTarget(Target):
    runtime = "onnxruntime"
    OPTIONS = {
        "threads": (int_at_least(0), "an integer >= 0 (0: all cores)"),
        "graph_optimization": (lambda v: v in GRAPH_LEVELS, f"one of {', '.join(GRAPH_LEVELS)}"),
    }

    def onnx_activations(self) -> str:
        # int8 activations shifted to uint8 (the same values): ONNX Runtime's x86
        # kernels are uint8 x int8, so every Conv fuses into an integer kernel.
        return "uint8"

    def compile(self, inp: CompileInput, dest: Path) -> dict[str, dict]:
        self.require()
        arts = {}
        for precision in self.profile.precisions:
            name = f"model.{precision}.onnx"
            optimized = optimize(inp.onnx_for(precision), dest / name, inp.input_shape)
            options = {
                "threads": self.profile.options.get("threads", 0),
                "graph_optimization": self.profile.options.get("graph_optimization", "all"),
                "offline_optimization": OFFLINE_LEVEL if optimized else "none",
                "providers": ["CPUExecutionProvider"],
            }
            arts[precision] = self.artifact(
                precision,
                [name],
                "onnx",
                dest,
                input={"name": inp.input_name, "shape": inp.input_shape},
                preprocess_built_in=False,
                options=options,
            )
        return arts

    def readme(self, manifest: dict) -> str:
        return (
            "Install on the device: `pip install 'edgetune[onnxruntime]'` (numpy, OpenCV and ONNX Runtime; no "
            "torch).\nThe `.onnx` files also run in any ONNX Runtime application: input float32 NCHW after the "
            "preprocessing below.\n"
        )


def optimize(src: Path, dst: Path, input_shape: list) -> bool:
    """Save ONNX Runtime's offline-optimised graph of `src` as `dst`, if it computes
    the same logits; otherwise copy `src` unchanged. Returns whether optimised."""
    import onnxruntime as ort

    with atomic_path(dst) as tmp:
        so = session_options(graph_optimization=OFFLINE_LEVEL)
        so.optimized_model_filepath = str(tmp)
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
            same = _same_outputs(src, tmp, input_shape)
        except Exception as e:  # noqa: BLE001 - any failure: ship the plain export
            logger.warning(
                "ONNX Runtime could not optimise %s offline (%s); the bundle keeps the plain graph.",
                src.name,
                str(e).splitlines()[0],
            )
            same = False
        if not same:
            shutil.copyfile(src, tmp)
    return same


def _same_outputs(a: Path, b: Path, input_shape: list, tol: float = 1e-3) -> bool:
    import onnxruntime as ort

    shape = [d if isinstance(d, int) else 2 for d in input_shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outs = []  # the source as ONNX Runtime optimises it vs the saved graph as it is
    for path in (a, b):
        s = ort.InferenceSession(
            str(path),
            session_options(graph_optimization=OFFLINE_LEVEL if path == a else "disable"),
            providers=["CPUExecutionProvider"],
        )
        outs.append(s.run(None, {s.get_inputs()[0].name: x})[0])
    diff = float(np.abs(outs[0] - outs[1]).max())
    if diff > tol * max(1.0, float(np.abs(outs[0]).max())):
        logger.warning(
            "ONNX Runtime's optimised graph of %s differs by %.3g; the bundle keeps the plain graph.", a.name, diff
        )
        return False
    return True
