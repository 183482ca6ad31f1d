"""OpenVINO session (the `intel` target).

The bundle's IR has a preprocessing built in for OpenVINO applications
(PrePostProcessor: uint8 BGR NHWC frames of any size -> RGB -> resize -> mean/std
-> NCHW). This session does not use it: it cuts the IR after that preprocessing
(at the node the build named `PLAIN_INPUT_NODE`) and feeds the float32 NCHW batch
that the one OpenCV preprocessing definition makes, like every other session.
OpenVINO's Interpolate on a whole 640x480 float frame measured 4-12 ms on a
2-core CPU, with dynamic or static shapes, NHWC or NCHW, `linear` or
`linear_onnx`; in uint8 it was still 1.1 ms, 3x OpenCV's (docs/bundles.md has
the table). `run_frames_built_in` runs the IR's own preprocessing (the parity
test holds it to the same top-1).

Every artifact is compiled with an explicit INFERENCE_PRECISION_HINT: left unset,
OpenVINO runs an "fp32" IR in bf16 on a CPU with AVX512_BF16 or AMX. The precision
the compiled model actually runs in is read back (`inference_precision`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.backends import ArraySession
from edgetune.runtime.preprocess import PreprocessSpec, to_bgr

PLAIN_INPUT_NODE = "edgetune_preprocessed"
# artifact precision -> INFERENCE_PRECISION_HINT: what the layers outside INT8 compute in.
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}
# OpenVINO's element type name -> the precision words of edgetune's rows and manifests.
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def compile_config(threads: int | None, hint: str = "LATENCY", precision: str = "fp32") -> dict:
    cfg = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION.get(precision, "f32")}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def has_bf16(core, device: str = "CPU") -> bool:
    """Does `device` compute in bf16 natively (AVX512_BF16 or AMX on a CPU)?"""
    try:
        return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:  # a device OpenVINO does not know here
        return False


def require_bf16(core, device: str, where: str) -> None:
    if not has_bf16(core, device):
        raise EdgetuneError(
            f"{where}: the bf16 artifact needs a device that computes in bf16 (on a CPU: AVX512_BF16 or AMX), and "
            f"OpenVINO's {device} here does not (its capabilities: "
            f"{', '.join(_capabilities(core, device)) or 'unknown'}). Use the bundle's fp32 or int8 artifact "
            "(--precision fp32 / int8)."
        )


def _capabilities(core, device: str) -> list[str]:
    try:
        return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        return []


def ran_precision(compiled) -> str:
    """The precision a compiled model's float layers run in, read back from OpenVINO."""
    name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return PRECISION_NAMES.get(name, name)


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

    def __init__(
        self,
        path: Path,
        spec: PreprocessSpec,
        precision: str,
        input_shape,
        device: str = "CPU",
        threads: int | None = None,
        hint: str = "LATENCY",
    ):
        import openvino as ov

        super().__init__(spec)
        self.precision, self.device = precision, device
        self.core = ov.Core()
        self.path = Path(path)
        if precision == "bf16":
            require_bf16(self.core, device, str(path))
        self.config = compile_config(threads, hint, precision)
        self.input_shape = [None, *list(input_shape)[1:]]
        model = self.core.read_model(str(path))
        self.built_in = any(op.get_friendly_name() == PLAIN_INPUT_NODE for op in model.get_ordered_ops())
        self.labels = _labels(model)
        source = plain_model(model, self.input_shape) if self.built_in else model
        self.compiled = self.core.compile_model(source, device, self.config)
        # The model's own output names: compiling can give an output a second name (a Convert
        # folded into the Gather before it), and the compiled output's get_any_name() may pick that.
        self.output_names = [o.get_any_name() for o in source.outputs]
        self.inference_precision = ran_precision(self.compiled)
        self._built_in = None
        self._requests: dict[int, object] = {}

    def infer(self, compiled, x: np.ndarray, every: bool = False):
        """One synchronous call of `compiled` through an InferRequest kept per
        compiled model, the input shared rather than copied: CompiledModel.__call__
        measured 10-20% slower at batch 1. `every`: all outputs, as a list."""
        import openvino as ov

        req = self._requests.get(id(compiled))
        if req is None:
            req = self._requests[id(compiled)] = compiled.create_infer_request()
        req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        req.infer()
        if every:
            return [req.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
        return req.get_output_tensor(0).data.copy()  # the request reuses its output buffer

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(self.compiled, batch)

    def _infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.infer(self.compiled, batch, every=True)

    def built_in_compiled(self):
        """The whole IR, its built-in preprocessing included (what an OpenVINO
        application without edgetune runs), compiled on first use."""
        if not self.built_in:
            raise EdgetuneError(f"{self.path}: this IR has no built-in preprocessing.")
        if self._built_in is None:
            self._built_in = self.core.compile_model(self.core.read_model(str(self.path)), self.device, self.config)
        return self._built_in

    def run_frames_built_in(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 BGR frames of any size through the IR's own preprocessing."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        frames = [to_bgr(f) for f in frames]
        if len({f.shape for f in frames}) == 1:
            return self.infer(self.built_in_compiled(), np.stack(frames))
        return np.concatenate(
            [self.infer(self.built_in_compiled(), f[None]) for f in frames]
        )  # sizes differ: one at a time


def _labels(model) -> list[str] | None:
    """The class names the build wrote into the IR's runtime info."""
    import json

    if not model.has_rt_info(["edgetune", "classes"]):
        return None
    return json.loads(model.get_rt_info(["edgetune", "classes"]).astype(str))


def open_session(path: Path, spec: PreprocessSpec, artifact: dict, threads: int | None = None, **_) -> OpenVinoSession:
    options = artifact.get("options", {})
    threads = threads if threads is not None else (options.get("threads") or None)
    return OpenVinoSession(
        path,
        spec,
        artifact.get("precision", "fp32"),
        artifact["input"]["shape"],
        options.get("device", "CPU"),
        threads,
        options.get("performance_hint", "LATENCY"),
    )
