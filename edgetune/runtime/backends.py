"""Runtime back-ends: which module opens an artifact for each runtime, which pip
extra installs it, and the batching every session shares.

Each back-end module (`ort`, `ov`, `trt`) imports its runtime only when a
session is opened, so `import edgetune.runtime.bundle` works on a device that has
just one of them."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import PreprocessSpec, preprocess


@dataclass(frozen=True)
class Runtime:
    """One runtime, declared once: every table of runtimes derives from `RUNTIMES`."""

    name: str
    session: str  # the torch-free module whose `open_session` opens an artifact
    module: str  # the Python module the runtime needs
    distribution: str  # the package its version is read from
    extra: str  # edgetune's pip extra for a device with this runtime
    install: str  # how to install it, for messages
    target: str  # "module:Class" of its target plug-in
    precisions: tuple[str, ...]  # the artifacts its plug-in builds
    host: bool  # runs on the build machine's CPU too (latency-aware pruning can time on it)

    def version(self) -> str | None:
        """The installed runtime's version, without importing it; None where it is missing."""
        import importlib.metadata

        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None


RUNTIMES = {
    r.name: r
    for r in (
        Runtime(
            "onnxruntime",
            "edgetune.runtime.ort",
            "onnxruntime",
            "onnxruntime",
            "onnxruntime",
            "pip install 'edgetune[onnxruntime]'",
            "edgetune.targets.cpu:CpuTarget",
            ("int8", "fp32"),
            True,  # no fp16 CPU kernels
        ),
        Runtime(
            "openvino",
            "edgetune.runtime.ov",
            "openvino",
            "openvino",
            "openvino",
            "pip install 'edgetune[openvino]'",
            "edgetune.targets.intel:IntelTarget",
            ("int8", "fp16", "bf16", "fp32"),
            True,
        ),
        Runtime(
            "tensorrt",
            "edgetune.runtime.trt",
            "tensorrt",
            "tensorrt",
            "tensorrt",
            "install JetPack's TensorRT Python bindings (python3-libnvinfer) and pip install 'edgetune[tensorrt]'",
            "edgetune.targets.jetson:JetsonTarget",
            ("int8", "fp16"),
            False,
        ),
    )
}
HOST_RUNTIMES = tuple(name for name, r in RUNTIMES.items() if r.host)


def available(runtime: str) -> bool:
    """Is `runtime`'s Python package importable here (without importing it)?"""
    if runtime not in RUNTIMES:
        return False
    try:
        return importlib.util.find_spec(RUNTIMES[runtime].module) is not None
    except (ImportError, ValueError):
        return False


def require(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise EdgetuneError(f"Unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}.")
    if not available(runtime):
        raise EdgetuneError(
            f"The {runtime} runtime is not installed in this Python. Install it with: {RUNTIMES[runtime].install}."
        )


def open_session(runtime: str, path: Path, spec: PreprocessSpec, artifact: dict, threads: int | None = None, **kw):
    """A `Session` for the artifact at `path` (an entry of a manifest's artifacts)."""
    require(runtime)
    module = importlib.import_module(RUNTIMES[runtime].session)
    return module.open_session(Path(path), spec, artifact, threads=threads, **kw)


class ArraySession:
    """What all sessions share: `run_frames` = the manifest's preprocessing + `run`,
    and splitting a batch for artifacts with a fixed batch size."""

    name = "?"
    precision = "?"
    inference_precision: str | None = None  # what the float layers compute in, where the runtime says
    fixed_batch: int | None = None

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec

    output_names: list[str] = []

    def _infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the model, in `output_names` order."""
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._infer_all(batch)[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._batched(batch, lambda b: [self._infer(b)])[0]

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs by name (e.g. an anomaly model's `score` and `map`)."""
        return dict(zip(self.output_names, self._batched(batch, self._infer_all)))

    def _batched(self, batch: np.ndarray, call) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        n = self.fixed_batch
        if n is None or len(batch) == n:
            return call(batch)
        parts = []
        for i in range(0, len(batch), n):
            chunk = batch[i : i + n]
            pad = n - len(chunk)
            if pad:  # the last, short chunk: pad with zeros, drop their outputs
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            parts.append([o[: n - pad] for o in call(chunk)])
        return [np.concatenate(outs) for outs in zip(*parts)]

    def run_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return self.run(preprocess(frames, self.spec))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.precision}>"
