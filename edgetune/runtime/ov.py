"""OpenVINO session (the `intel` target).

The bundle's IR has the preprocessing built in (PrePostProcessor: uint8 BGR NHWC
frames of any size -> resize -> RGB -> mean/std -> NCHW), so `run_frames` hands
raw frames to OpenVINO. `run` takes the already-preprocessed float32 NCHW batch
like every other session: it uses the same IR cut after its preprocessing (the
node the build named `PLAIN_INPUT_NODE`), compiled on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgetune.runtime.backends import ArraySession
from edgetune.runtime.preprocess import PreprocessSpec, to_bgr

PLAIN_INPUT_NODE = "edgetune_preprocessed"


def compile_config(threads: int | None, hint: str = "LATENCY") -> dict:
    cfg = {"PERFORMANCE_HINT": hint}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def plain_model(model, input_shape: Sequence[int | None], input_name: str = "input"):
    """The model without its built-in preprocessing: a float32 NCHW Parameter
    replaces the output of the last preprocessing node."""
    import openvino as ov

    nodes = [op for op in model.get_ordered_ops() if op.get_friendly_name() == PLAIN_INPUT_NODE]
    if not nodes:
        return None
    shape = ov.PartialShape([-1 if d is None else int(d) for d in input_shape])
    param = ov.opset13.parameter(shape, ov.Type.f32, name=input_name)
    nodes[0].output(0).replace(param.output(0))
    return ov.Model(model.get_results(), [param], "plain")


class OpenVinoSession(ArraySession):
    name = "openvino"

    def __init__(self, path: Path, spec: PreprocessSpec, precision: str, input_shape, device: str = "CPU", threads: int | None = None, hint: str = "LATENCY"):
        import openvino as ov

        super().__init__(spec)
        self.precision, self.device = precision, device
        self.core = ov.Core()
        self.path = Path(path)
        self.config = compile_config(threads, hint)
        self.input_shape = [None, *list(input_shape)[1:]]
        model = self.core.read_model(str(path))
        self.built_in = any(op.get_friendly_name() == PLAIN_INPUT_NODE for op in model.get_ordered_ops())
        self.labels = _labels(model)
        self.compiled = self.core.compile_model(model, device, self.config)
        self._plain = None if self.built_in else self.compiled
        self._requests: dict[int, object] = {}

    def _plain_compiled(self):
        if self._plain is None:
            model = plain_model(self.core.read_model(str(self.path)), self.input_shape)
            self._plain = self.core.compile_model(model, self.device, self.config)
        return self._plain

    def infer(self, compiled, x: np.ndarray) -> np.ndarray:
        """One synchronous call of `compiled` (self.compiled: the IR's own input)
        through an InferRequest kept per compiled model, the input shared rather
        than copied: CompiledModel.__call__ measured 10-20% slower at batch 1."""
        import openvino as ov

        req = self._requests.get(id(compiled))
        if req is None:
            req = self._requests[id(compiled)] = compiled.create_infer_request()
        req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        req.infer()
        return req.get_output_tensor(0).data.copy()  # the request reuses its output buffer

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(self._plain_compiled(), batch)

    def run_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        if not self.built_in:
            return super().run_frames(frames)
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        frames = [to_bgr(f) for f in frames]
        if len({f.shape for f in frames}) == 1:
            return self.infer(self.compiled, np.stack(frames))
        return np.concatenate([self.infer(self.compiled, f[None]) for f in frames])  # sizes differ: one at a time


def _labels(model) -> list[str] | None:
    """The class names the build wrote into the IR's runtime info."""
    import json

    if not model.has_rt_info(["edgetune", "classes"]):
        return None
    return json.loads(model.get_rt_info(["edgetune", "classes"]).astype(str))


def open_session(path: Path, spec: PreprocessSpec, artifact: dict, threads: int | None = None, **_) -> OpenVinoSession:
    options = artifact.get("options", {})
    threads = threads if threads is not None else (options.get("threads") or None)
    return OpenVinoSession(path, spec, artifact.get("precision", "fp32"), artifact["input"]["shape"], options.get("device", "CPU"), threads,
                           options.get("performance_hint", "LATENCY"))
