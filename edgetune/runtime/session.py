"""What every runtime session offers. Benchmarking, evaluation, verification and
camera inference work on this interface alone, never per target."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Session(Protocol):
    name: str  # "onnxruntime", "openvino", "tensorrt", "pytorch"
    precision: str  # the artifact's: "fp32", "bf16", "fp16", "int8"
    inference_precision: str | None  # what its float layers ran in, read back from the runtime where it says

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Model call alone: float32 NCHW, already preprocessed -> float32 logits (N, classes)."""
        ...

    def run_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """End to end: uint8 HxWx3 BGR frames (OpenCV's order) -> logits, with the
        bundle's preprocessing (in numpy/OpenCV, or built into the artifact)."""
        ...
