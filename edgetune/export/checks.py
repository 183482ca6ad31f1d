"""Checks every exported ONNX file passes; they fail loudly.

Static: onnx.checker, standard ops only, and every weight Q/DQ in the form the
runtimes (TensorRT's explicit quantization above all) accept: int8, per output
channel, zero-point 0. Dynamic: ONNX Runtime agrees with PyTorch on real images."""

from __future__ import annotations

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx")
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _const(model_proto, name: str):
    """The value of an initializer or Constant output, else None."""
    from onnx import numpy_helper

    for init in model_proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model_proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def custom_ops(model_proto) -> list[str]:
    return sorted({f"{n.domain}::{n.op_type}" for n in model_proto.graph.node if n.domain not in STANDARD_DOMAINS})


def weight_dequantizers(model_proto) -> list:
    """The weights' quantizers: DequantizeLinear nodes on a constant that feed (maybe
    through Transpose/Reshape) the weight input of a Conv, Gemm or MatMul. (NNCF
    also quantizes e.g. a LayerNorm's scale; those are not layer weights.)"""
    consumers: dict[str, list] = {}
    for n in model_proto.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))

    def feeds_weight(name: str, depth: int = 0) -> bool:
        for node, i in consumers.get(name, []):
            if node.op_type in WEIGHT_OPS and i == WEIGHT_OPS[node.op_type]:
                return True
            if node.op_type in ("Transpose", "Reshape", "Identity") and depth < 3 and feeds_weight(node.output[0], depth + 1):
                return True
        return False

    return [n for n in model_proto.graph.node
            if n.op_type == "DequantizeLinear" and _const(model_proto, n.input[0]) is not None and feeds_weight(n.output[0])]


def qdq_problems(model_proto) -> list[str]:
    """Empty when no custom ops remain and every weight Q/DQ is int8, per-channel on
    axis 0 (the output channels) with zero-point 0."""
    problems = [f"custom op {op} (only standard ONNX ops may remain)" for op in custom_ops(model_proto)]
    for node in weight_dequantizers(model_proto):
        name = node.name or node.output[0]
        w = _const(model_proto, node.input[0])
        scale = _const(model_proto, node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if w.dtype == np.int32:
            continue  # a bias in int32 (scale = input scale x weight scale) is not a weight quantizer
        if w.dtype != np.int8:
            problems.append(f"weight {node.input[0]} ({name}) is {w.dtype}, not int8")
        zp = _const(model_proto, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and np.any(zp != 0):
            problems.append(f"weight {node.input[0]} ({name}) has zero-point {zp.ravel()[:4].tolist()}..., not 0")
        if scale is None or scale.size != w.shape[0] or (w.shape[0] > 1 and axis not in (0, -w.ndim)):
            problems.append(f"weight {node.input[0]} ({name}) is not quantized per output channel on axis 0 "
                            f"(scale of {None if scale is None else scale.size} values, axis {axis}, weight shape {list(w.shape)})")
    return problems


def activation_problems(model_proto, activations: str = "keep") -> list[str]:
    """Activation Q/DQ zero-points: 0 everywhere for `activations="keep"`; for
    `"uint8"` (ONNX Runtime on x86) uint8 with zero-point 128 (a shifted int8
    tensor) or 0 (a non-negative one)."""
    weights = {id(n) for n in weight_dequantizers(model_proto)}
    problems = []
    for node in model_proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or id(node) in weights:
            continue  # weights are qdq_problems' job
        zp = _const(model_proto, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.uint8)
        values = set(zp.ravel().tolist())
        ok = values == {0} if activations == "keep" else (zp.dtype == np.uint8 and values <= {0, 128} and len(values) == 1)
        if not ok:
            problems.append(f"activation {node.op_type} {node.name or node.output[0]}: {zp.dtype} zero-point {sorted(values)[:2]} "
                            f"({'0 required' if activations == 'keep' else 'uint8 0 or 128 expected'})")
    return problems


def activation_types(model_proto) -> dict[str, int]:
    """How many activation quantizers produce each integer type (int8 / uint8)."""
    out: dict[str, int] = {}
    for n in model_proto.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            zp = _const(model_proto, n.input[2])
            if zp is not None:
                key = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8"}.get(zp.dtype, str(zp.dtype))
                out[key] = out.get(key, 0) + 1
    return out


def ort_session(path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# Integer kernels round differently from NNCF's float simulation: logits move by a
# few tenths at most, which flips images whose two best classes are nearly tied.
# Such a flip is not an export fault; a flip of a decisive image is.
TIE_MARGIN = 0.5  # logits between PyTorch's best and second-best class


def compare_with_torch(path, torch_logits: np.ndarray, inputs: np.ndarray, batch: int = 32) -> dict:
    """ONNX Runtime on `inputs` against the given PyTorch logits: top-1 agreement
    on all images and on the decisive ones (margin above TIE_MARGIN)."""
    from edgetune.metrics import agreement

    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    got = np.concatenate([sess.run(None, {name: inputs[i:i + batch]})[0] for i in range(0, len(inputs), batch)])
    top2 = np.sort(torch_logits, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > TIE_MARGIN
    return {"images": int(len(inputs)), "agreement": agreement(torch_logits, got), "decisive_images": int(decisive.sum()),
            "decisive_agreement": agreement(torch_logits[decisive], got[decisive]), "tie_margin": TIE_MARGIN,
            "max_logit_diff": float(np.abs(torch_logits - got).max()) if len(got) else 0.0}
