"""Checks every exported ONNX file passes; they fail loudly.

Static: onnx.checker, standard ops only, and every weight Q/DQ in the form the
runtimes (TensorRT's explicit quantization above all) accept: int8, per output
channel, zero-point 0. A target plug-in that needs more names its rules
(`Target.qdq_rules`, e.g. "tensorrt"), checked by `rule_problems` when the build
compiles for it. Dynamic: ONNX Runtime agrees with PyTorch on real images."""

from __future__ import annotations

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx")
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


class GraphIndex:
    """Lookups over an ONNX graph, built once: its constants (initializers and
    Constant nodes), the node producing each tensor and the (node, input index)
    pairs reading it. A pass that edits the graph may keep asking about the names
    it has not changed."""

    def __init__(self, model_proto):
        g = model_proto.graph
        self.initializers = {i.name: i for i in g.initializer}
        self.constants = dict(self.initializers)  # name -> TensorProto
        for n in g.node:
            value = (
                next((a.t for a in n.attribute if a.name == "value"), None)
                if n.op_type == "Constant" and n.output
                else None
            )
            if value is not None:
                self.constants[n.output[0]] = value
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))

    def value(self, name: str):
        """The value of a constant tensor, else None."""
        from onnx import numpy_helper

        t = self.constants.get(name)
        return None if t is None else numpy_helper.to_array(t)


def custom_ops(model_proto) -> list[str]:
    return sorted({f"{n.domain}::{n.op_type}" for n in model_proto.graph.node if n.domain not in STANDARD_DOMAINS})


def weight_dequantizers(model_proto, index: GraphIndex | None = None) -> list:
    """The weights' quantizers: DequantizeLinear nodes on a constant that feed (maybe
    through Transpose/Reshape) the weight input of a Conv, Gemm or MatMul. (NNCF
    also quantizes e.g. a LayerNorm's scale; those are not layer weights.)"""
    index = index or GraphIndex(model_proto)

    def feeds_weight(name: str, depth: int = 0) -> bool:
        for node, i in index.consumers.get(name, []):
            if node.op_type in WEIGHT_OPS and i == WEIGHT_OPS[node.op_type]:
                return True
            if (
                node.op_type in ("Transpose", "Reshape", "Identity")
                and depth < 3
                and feeds_weight(node.output[0], depth + 1)
            ):
                return True
        return False

    return [
        n
        for n in model_proto.graph.node
        if n.op_type == "DequantizeLinear" and index.value(n.input[0]) is not None and feeds_weight(n.output[0])
    ]


def weight_axis(node, weight_index: int, rank: int | None) -> int | None:
    """The output-channel axis of a layer's weight (input `weight_index` of `node`,
    `rank` dimensions, None if unknown): where its per-channel scales must lie."""
    if weight_index != 1:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    if node.op_type == "MatMul":
        return rank - 1 if rank else -1  # the last axis of B
    return None


def qdq_problems(model_proto) -> list[str]:
    """Empty when no custom ops remain and every weight Q/DQ is int8, per output
    channel (axis 0 of a Conv, the last axis of a MatMul's B) with zero-point 0."""
    problems = [f"custom op {op} (only standard ONNX ops may remain)" for op in custom_ops(model_proto)]
    index = GraphIndex(model_proto)
    for node in weight_dequantizers(model_proto, index):
        name = node.name or node.output[0]
        w = index.value(node.input[0])
        scale = index.value(node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(w.ndim, 1)
        # A weight feeding its layer directly has a known output axis; behind a Transpose, axis 0.
        want = {
            weight_axis(u, i, w.ndim) for u, i in index.consumers.get(node.output[0], []) if u.op_type in WEIGHT_OPS
        } - {None} or {0}
        out_axis = min(want)
        if w.dtype == np.int32:
            continue  # a bias in int32 (scale = input scale x weight scale) is not a weight quantizer
        if w.dtype != np.int8:
            problems.append(f"weight {node.input[0]} ({name}) is {w.dtype}, not int8")
        zp = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and np.any(zp != 0):
            problems.append(f"weight {node.input[0]} ({name}) has zero-point {zp.ravel()[:4].tolist()}..., not 0")
        if (
            scale is None
            or scale.size != w.shape[out_axis]
            or (w.shape[out_axis] > 1 and axis != out_axis)
            or len(want) > 1
        ):
            problems.append(
                f"weight {node.input[0]} ({name}) is not quantized per output channel on axis {out_axis} "
                f"(scale of {None if scale is None else scale.size} values, axis {axis}, weight shape {list(w.shape)})"
            )
    return problems


def activation_problems(model_proto, activations: str = "keep") -> list[str]:
    """Activation Q/DQ zero-points: 0 everywhere for `activations="keep"`; for
    `"uint8"` (ONNX Runtime on x86) uint8 with zero-point 128 (a shifted int8
    tensor) or 0 (a non-negative one)."""
    index = GraphIndex(model_proto)
    weights = {id(n) for n in weight_dequantizers(model_proto, index)}
    problems = []
    for node in model_proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or id(node) in weights:
            continue  # weights are qdq_problems' job
        zp = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.uint8)
        values = set(zp.ravel().tolist())
        ok = (
            values == {0}
            if activations == "keep"
            else (zp.dtype == np.uint8 and values <= {0, 128} and len(values) == 1)
        )
        if not ok:
            problems.append(
                f"activation {node.op_type} {node.name or node.output[0]}: {zp.dtype} zero-point {sorted(values)[:2]} "
                f"({'0 required' if activations == 'keep' else 'uint8 0 or 128 expected'})"
            )
    return problems


def activation_types(model_proto) -> dict[str, int]:
    """How many activation quantizers produce each integer type (int8 / uint8)."""
    out: dict[str, int] = {}
    index = GraphIndex(model_proto)
    for n in model_proto.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            zp = index.value(n.input[2])
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

    def agreement(a, b) -> float:
        return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else 1.0

    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    got = np.concatenate([sess.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)])
    top2 = np.sort(torch_logits, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > TIE_MARGIN
    return {
        "images": int(len(inputs)),
        "agreement": agreement(torch_logits, got),
        "decisive_images": int(decisive.sum()),
        "decisive_agreement": agreement(torch_logits[decisive], got[decisive]),
        "tie_margin": TIE_MARGIN,
        "max_logit_diff": float(np.abs(torch_logits - got).max()) if len(got) else 0.0,
    }


# --- TensorRT's explicit-quantization rules (the jetson targets) ---------------

# ONNX operators TensorRT's parser imports (onnx-tensorrt, TensorRT 8.5-10).
TRT_OPS = set(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip Concat
Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal
Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Hardmax Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization
LpPool LRN MatMul Max MaxPool Mean Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape
Resize ReverseSequence RoiAlign Round ScaledTanh Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)
QUANTIZABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def tensorrt_problems(model) -> tuple[list[str], list[str]]:
    """TensorRT explicit-quantization rules on an ONNX ModelProto: (problems that
    keep the engine from being INT8 or from building, notes worth knowing). The
    same problem on many nodes is one line with a count and examples."""
    from onnx import TensorProto, numpy_helper

    found: dict[str, list[str]] = {}

    def problem(message: str, node=None) -> None:
        found.setdefault(message, []).append(node.name or node.output[0] if node is not None else "")

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problem(f"opset {opset}: per-channel Q/DQ needs opset >= 13")
    index = GraphIndex(model)
    consts, producer, consumers = index.constants, index.producer, index.consumers

    for n in graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in TRT_OPS:
            problem(
                f"operator {n.domain + '.' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type} is not imported by "
                "TensorRT's ONNX parser",
                n,
            )

    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        users = consumers.get(n.output[0], [])
        if n.op_type == "DequantizeLinear" and users and all(u.op_type in QUANTIZABLE and i == 2 for u, i in users):
            problem("a bias is quantized (int32 Q/DQ); TensorRT takes float biases", n)
            continue
        if len(n.input) < 2 or n.input[1] not in consts:
            problem(f"{n.op_type}: the scale must be a constant", n)
            continue
        scale = numpy_helper.to_array(consts[n.input[1]])
        if (scale <= 0).any():
            problem(f"{n.op_type}: scales must be positive", n)
        if len(n.input) < 3 or not n.input[2]:
            problem(f"{n.op_type}: no zero-point, so ONNX defaults to uint8; TensorRT needs int8 with zero-point 0", n)
        elif n.input[2] not in consts:
            problem(f"{n.op_type}: the zero-point must be a constant", n)
        else:
            zp = consts[n.input[2]]
            if zp.data_type != TensorProto.INT8:
                problem(
                    f"{n.op_type}: zero-point type {TensorProto.DataType.Name(zp.data_type).lower()}; TensorRT needs "
                    "int8 (symmetric)",
                    n,
                )
            if numpy_helper.to_array(zp).any():
                problem(f"{n.op_type}: zero-point is not 0 (asymmetric); TensorRT needs symmetric quantization", n)
        if scale.size > 1 and n.op_type == "DequantizeLinear":
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            rank = len(numpy_helper.to_array(consts[n.input[0]]).shape) if n.input[0] in consts else None
            want = {weight_axis(u, i, rank) for u, i in users if u.op_type in QUANTIZABLE}
            if not want or None in want:
                problem("per-channel scales on an activation; TensorRT needs per-tensor activation scales", n)
            elif (axis % rank if rank else axis) not in want:
                problem(
                    f"per-channel weight scales on axis {axis}; TensorRT needs the output-channel axis "
                    f"({sorted(want)[0]})",
                    n,
                )

    unquantized = []
    for n in graph.node:
        if n.op_type not in QUANTIZABLE:
            continue
        fed = [bool(name) and name in producer and producer[name].op_type == "DequantizeLinear" for name in n.input[:2]]
        if all(fed):
            continue
        # Q/DQ before one input only: TensorRT folds the weight's DQ and runs the layer in float (FP16).
        unquantized.append(
            f"{n.name or n.output[0]}"
            + (f" (Q/DQ before its {'input' if fed[0] else 'weight'} only)" if any(fed) else "")
        )
    notes = (
        [
            f"{len(unquantized)} Conv/Gemm/MatMul layer(s) without Q/DQ before both inputs run in FP16: "
            f"{', '.join(unquantized[:5])}{' ...' if len(unquantized) > 5 else ''}"
        ]
        if unquantized
        else []
    )
    problems = [
        f"{msg}" + (f" ({len(names)}x, e.g. {', '.join(n for n in names[:3] if n)})" if any(names) else "")
        for msg, names in found.items()
    ]
    return problems, notes


RULES = {"tensorrt": tensorrt_problems}


def rule_problems(model, rules: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of a named rule set on an ONNX ModelProto."""
    return RULES[rules](model)
