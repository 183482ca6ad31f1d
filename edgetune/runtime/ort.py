"""ONNX Runtime session (the `cpu` target; also runs a Jetson bundle's Q/DQ ONNX
on a machine without TensorRT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune.runtime.backends import ArraySession
from edgetune.runtime.preprocess import PreprocessSpec

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


def session_options(threads: int | None = None, graph_optimization: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: ORT warns about harmless initializer layouts
    return so


class OrtSession(ArraySession):
    name = "onnxruntime"
    inference_precision = "fp32"  # the CPU execution provider computes float layers in fp32

    def __init__(
        self,
        path: Path,
        spec: PreprocessSpec,
        precision: str,
        threads: int | None = None,
        graph_optimization: str = "all",
    ):
        import onnxruntime as ort

        super().__init__(spec)
        self.precision = precision
        self.threads = threads
        self.session = ort.InferenceSession(
            str(path), session_options(threads, graph_optimization), providers=["CPUExecutionProvider"]
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names[:1], {self.input_name: batch})[0]

    def _infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


def open_session(path: Path, spec: PreprocessSpec, artifact: dict, threads: int | None = None, **_) -> OrtSession:
    options = artifact.get("options", {})
    threads = threads if threads is not None else (options.get("threads") or None)
    return OrtSession(path, spec, artifact.get("precision", "fp32"), threads, options.get("graph_optimization", "all"))
