"""The ONNX Runtime variant of an INT8 graph (the `cpu` target's, `--activations
uint8`). ONNX Runtime's x86 CPU provider fuses DequantizeLinear -> Conv ->
QuantizeLinear into one integer kernel (QLinearConv) only when the activations
are uint8 and a quantizer follows the Conv; these rewrites give it both:
activations shifted to uint8 (the same values), and a quantizer added behind each
convolution that a float op (hard-swish, GELU, LayerNorm) reads."""

from __future__ import annotations

import numpy as np

ADDED = "/output_quantizer"  # the name of each QuantizeLinear quantize_layer_outputs adds
MOVES_DATA = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")  # ONNX Runtime moves a DQ past these


def shift_activations_to_uint8(model_proto) -> int:
    """Activation Q/DQ int8 with zero-point 0 -> uint8 with zero-point 128: the
    same real values (q + 128, same scale), so the model computes exactly the
    same. ONNX Runtime's x86 CPU kernels are uint8-activation x int8-weight; with
    every activation in uint8, each DQ -> Conv -> Q becomes one QLinearConv and
    each residual Add a QLinearAdd (int8 activations leave some Convs in float
    between DequantizeLinear and QuantizeLinear). Weights stay int8, zero-point 0.

    A signed quantizer right after a ReLU (or Clip from 0: ReLU6), as a model made
    for TensorRT has, becomes uint8 with zero-point 0 instead: its values are 0..127
    either way, and ONNX Runtime drops a ReLU whose quantizer already clamps at 0 and
    fuses Conv + ReLU (with zero-point 128 the ReLU stays and so does a float Conv).
    The one difference: uint8 saturates at 255 steps where int8 stopped at 127.

    A ReLU6 (Clip from 0 to 6) is dropped by ONNX Runtime only when the quantizer's
    whole uint8 range (255 x scale) lies inside [0, 6]; otherwise the Conv before it
    stays float (33 of efficientnet_lite0's 49 Convs). So a signed quantizer after a
    Clip gets the uint8 scale that spans what it let through, up to the smaller of
    its own top (127 x scale) and the Clip's: the same clamp, a grid about twice as
    fine. Writing the Clip as a ReLU instead would let through the values the int8
    quantizer clipped (it broke an anomaly model's score ranks)."""
    from onnx import numpy_helper

    from edgetune.export.checks import GraphIndex

    g = model_proto.graph
    index = GraphIndex(model_proto)
    value, producer = index.value, index.producer

    def non_negative(name: str) -> bool:
        node = producer.get(name)
        if node is None:
            return False
        low = value(node.input[1]) if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] else None
        return node.op_type == "Relu" or (low is not None and float(low) >= 0)

    after_relu = {q.output[0] for q in g.node if q.op_type == "QuantizeLinear" and non_negative(q.input[0])}
    shifted, n = {}, 0
    for node in g.node:
        if (
            node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            or len(node.input) < 3
            or value(node.input[0]) is not None
        ):
            continue  # weights (constant inputs) stay int8
        zp = value(node.input[2])
        if zp is None or zp.dtype != np.int8:
            continue
        quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        to_zero = quantized in after_relu and not zp.any()
        name = node.input[2] + ("_uint8_0" if to_zero else "_uint8")
        if name not in shifted:
            new_zp = np.zeros(zp.shape, np.uint8) if to_zero else (zp.astype(np.int16) + 128).astype(np.uint8)
            shifted[name] = numpy_helper.from_array(new_zp, name)
            g.initializer.append(shifted[name])
        node.input[2] = name
        n += 1
    for q in g.node:
        if q.op_type == "QuantizeLinear" and q.output[0] in after_relu and q.input[2].endswith("_uint8_0"):
            _fit_scale_to_clip(g, index, q)
    return n


def _fit_scale_to_clip(g, index, q) -> None:
    """A uint8 quantizer (zero-point 0) after a Clip whose top lies below its range:
    the scale that ends the range at what the int8 quantizer let through, in `q`
    and the DequantizeLinears reading it (see shift_activations_to_uint8)."""
    from onnx import numpy_helper

    clip = index.producer[q.input[0]]
    high = index.value(clip.input[2]) if clip.op_type == "Clip" and len(clip.input) > 2 and clip.input[2] else None
    scale = index.value(q.input[1])
    if high is None or scale is None or scale.size != 1 or 255 * float(scale) <= float(high):
        return
    new = np.float32(min(127 * float(scale), float(high)) / 255)
    while np.float32(255) * new > np.float32(high):  # ONNX Runtime compares in float32
        new = np.nextafter(new, np.float32(0))
    name = f"{q.output[0]}_uint8_scale"
    g.initializer.append(numpy_helper.from_array(new.reshape(scale.shape), name))
    q.input[1] = name
    for reader, _ in index.consumers.get(q.output[0], []):
        if reader.op_type == "DequantizeLinear":
            reader.input[1] = name


def added_output_quantizers(model_proto) -> int:
    return sum(n.op_type == "QuantizeLinear" and n.name.endswith(ADDED) for n in model_proto.graph.node)


def _fused_already(index, name: str) -> bool:
    """Whether ONNX Runtime already ends the group producing `name` in a
    QuantizeLinear: every reader is one, or a lone ReLU (or Clip from 0) whose
    readers all are (the ReLU is dropped into the quantizer's clamp)."""
    readers = [n for n, _ in index.consumers.get(name, [])]
    if readers and all(n.op_type == "QuantizeLinear" for n in readers):
        return True
    if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip"):
        after = [n for n, _ in index.consumers.get(readers[0].output[0], [])]
        return bool(after) and all(n.op_type == "QuantizeLinear" for n in after)
    return False


def _feeds_quantizers(index, name: str, graph_outputs: set[str], depth: int = 16, seen: dict | None = None) -> bool:
    """Whether every path from `name` reaches a QuantizeLinear (within `depth`
    float ops) before a graph output: the tensor lies inside the quantized network,
    not on a head whose float values the task decodes (scores, box offsets)."""
    seen = {} if seen is None else seen
    if (name, depth) not in seen:
        readers = [n for n, _ in index.consumers.get(name, [])]
        seen[name, depth] = (
            name not in graph_outputs
            and depth > 0
            and bool(readers)
            and all(
                n.op_type == "QuantizeLinear"
                or all(_feeds_quantizers(index, o, graph_outputs, depth - 1, seen) for o in n.output)
                for n in readers
            )
        )
    return seen[name, depth]


def unfused_outputs(model_proto) -> list[str]:
    """The outputs of quantized convolutions (activation and weight both through a
    DequantizeLinear) that a float op reads before the next quantizer: hard-swish,
    GELU, SiLU, LayerNorm, a layer-scale Mul. ONNX Runtime fuses DQ -> Conv -> Q into
    an integer kernel only with that Q, so these convolutions stay float. (Its
    MatMul and Gemm are fused without one: MatMulIntegerToFloat.)"""
    from edgetune.export.checks import GraphIndex

    index = GraphIndex(model_proto)
    graph_outputs = {o.name for o in model_proto.graph.output}
    found = []
    for node in model_proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        a, w = (index.producer.get(name) for name in node.input[:2])
        while a is not None and a.op_type in MOVES_DATA:  # ONNX Runtime moves the DQ past these
            a = index.producer.get(a.input[0])
        if not (a is not None and w is not None and a.op_type == w.op_type == "DequantizeLinear"):
            continue
        out = node.output[0]
        if not _fused_already(index, out) and _feeds_quantizers(index, out, graph_outputs):
            found.append(out)
    return found


def quantize_layer_outputs(model_proto, images: np.ndarray, batch: int = 16) -> int:
    """A Q/DQ pair (int8, zero-point 0, scale = the largest |value| seen on
    `images` / 127) after each of `unfused_outputs`, so that ONNX Runtime fuses
    those layers too. The float op after them (hard-swish, GELU, ...) then reads an
    8-bit tensor: its error shows in the export's agreement check and the build's
    evaluation. Returns how many were added."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = unfused_outputs(model_proto)
    if not names:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model_proto)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own values
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    peak = np.zeros(len(names), np.float32)
    input_name = sess.get_inputs()[0].name
    for i in range(0, len(images), batch):
        outs = sess.run(None, {input_name: images[i : i + batch]})
        peak = np.maximum(peak, [float(np.abs(o).max()) for o in outs])
    g = model_proto.graph
    readers: dict[str, list] = {}
    for n in g.node:
        for j, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, j))
    position = {n.output[0]: k for k, n in enumerate(g.node) if n.output}
    for name, top in sorted(zip(names, peak), key=lambda e: -position[e[0]]):  # last first: positions hold
        scale, zp = f"{name}_out_scale", f"{name}_out_zp"
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(max(top, 1e-8) / 127, np.float32), scale),
                numpy_helper.from_array(np.array(0, np.int8), zp),
            ]
        )
        for reader, j in readers.get(name, []):
            reader.input[j] = f"{name}_dq"
        at = position[name] + 1
        g.node.insert(at, helper.make_node("DequantizeLinear", [f"{name}_q", scale, zp], [f"{name}_dq"]))
        g.node.insert(at, helper.make_node("QuantizeLinear", [name, scale, zp], [f"{name}_q"], name=f"{name}{ADDED}"))
    return len(names)
