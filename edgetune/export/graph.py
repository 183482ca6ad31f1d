"""The ONNX graph side of an export, shared by every task: torch.onnx.export to a
file (atomically), the graph rewrites that make runtimes fuse the INT8 model
(identities out, weight quantizers folded into int8 initializers; for ONNX
Runtime the variant of `edgetune.export.ort_variant`), and the static checks of
every export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.export.ort_variant import (  # noqa: F401 - also for export_onnx's callers
    added_output_quantizers,
    quantize_layer_outputs,
    shift_activations_to_uint8,
)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
PRECISIONS = ("fp32", "int8")


def _remove_identities(model_proto) -> None:
    g = model_proto.graph
    outputs = {o.name for o in g.output}
    rename = {}
    for node in list(g.node):
        if node.op_type == "Identity" and node.output[0] not in outputs:
            src = node.input[0]
            rename[node.output[0]] = rename.get(src, src)
            g.node.remove(node)
    for node in g.node:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _fold_weight_quantizers(model_proto) -> int:
    """Constant weight -> QuantizeLinear -> DequantizeLinear  =>  int8 weight -> DequantizeLinear.
    Rounds half to even and saturates, exactly as QuantizeLinear does."""
    from onnx import numpy_helper

    from edgetune.export.checks import GraphIndex

    g = model_proto.graph
    index = GraphIndex(model_proto)
    value = index.value
    folded = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        w = value(q.input[0])
        if w is None or w.dtype != np.float32 or len(q.input) < 3:
            continue
        scale, zp = value(q.input[1]), value(q.input[2])
        if scale is None or zp is None:
            continue
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        info = np.iinfo(zp.dtype)
        qw = np.clip(
            np.rint(w / scale.reshape(shape)) + zp.reshape(shape if zp.size > 1 else [1] * w.ndim).astype(np.int32),
            info.min,
            info.max,
        ).astype(zp.dtype)
        name = q.output[0] + "_int8"
        g.initializer.append(numpy_helper.from_array(qw, name))
        for k, (user, i) in enumerate(index.consumers.get(q.output[0], [])):
            user.input[i] = name
            zero_point = value(user.input[2]) if user.op_type == "DequantizeLinear" and len(user.input) > 2 else None
            if zero_point is not None:
                # Each weight its own zero point. The exporter shares equal ones, and OpenVINO's graph passes
                # (convert_model, PrePostProcessor) leave a weight whose zero point also serves a weight of
                # another rank undequantized, so its layer runs in f32: 24 of vit_tiny's 49 linear layers,
                # whose zero point of 192 zeros the patch embedding's Conv shares.
                own = f"{name}_zero_point{k}"
                g.initializer.append(numpy_helper.from_array(zero_point, own))
                user.input[2] = own
        g.node.remove(q)
        folded += 1
    _drop_unused_initializers(g)
    return folded


def _fold_weight_transposes(model_proto) -> int:
    """int8 weight -> DequantizeLinear -> Transpose  =>  transposed int8 weight ->
    DequantizeLinear (its per-channel axis moved along). The exporter writes a
    Linear on 3-D tokens (ViT) as MatMul(x, Transpose(W)); ONNX Runtime fuses a
    MatMul into an integer kernel and TensorRT quantizes it only when the weight's
    DequantizeLinear feeds the MatMul directly."""
    from onnx import helper, numpy_helper

    from edgetune.export.checks import GraphIndex

    g = model_proto.graph
    index = GraphIndex(model_proto)
    folded = 0
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        dq = index.producer.get(t.input[0])
        if (
            dq is None
            or dq.op_type != "DequantizeLinear"
            or dq.input[0] not in index.initializers
            or len(index.consumers.get(dq.output[0], [])) != 1
        ):
            continue
        w = numpy_helper.to_array(index.initializers[dq.input[0]])
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), list(range(w.ndim))[::-1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % max(w.ndim, 1)
        name = dq.input[0] + "_T"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(perm)), name))
        dq.input[0] = name
        for a in [a for a in dq.attribute if a.name == "axis"]:
            dq.attribute.remove(a)
        dq.attribute.append(helper.make_attribute("axis", perm.index(axis)))
        dq.output[0] = t.output[0]
        g.node.remove(t)
        folded += 1
    _drop_unused_initializers(g)
    return folded


def dequantize_constants(model_proto) -> int:
    """DequantizeLinear on a constant that no Conv, Gemm or MatMul takes as its weight
    => the float constant it computes (bit for bit). NNCF quantizes LayerNorm's scale
    (ConvNeXt, ViT), but no runtime has an integer LayerNorm: the int8 copy saves a
    few hundred bytes and leaves a constant Q/DQ that is neither a layer weight nor
    an activation, which TensorRT's rules and ONNX Runtime's uint8 form do not expect."""
    from onnx import numpy_helper

    from edgetune.export.checks import GraphIndex, weight_dequantizers

    g = model_proto.graph
    index = GraphIndex(model_proto)
    weights = {id(n) for n in weight_dequantizers(model_proto, index)}
    done = 0
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and id(n) not in weights]:
        value = dequantized(index, dq)
        if value is None:
            continue
        g.initializer.append(numpy_helper.from_array(value, dq.output[0]))
        g.node.remove(dq)
        done += 1
    _drop_unused_initializers(g)
    return done


def dequantized(index, dq) -> np.ndarray | None:
    """The float32 value a DequantizeLinear of constants computes, bit for bit
    (per-tensor or per-axis); None where its inputs are not constants."""
    q, scale = index.value(dq.input[0]), index.value(dq.input[1])
    if q is None or scale is None:
        return None
    zp = index.value(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, q.dtype)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[next((a.i for a in dq.attribute if a.name == "axis"), 1)] = scale.size
    value = (q.astype(np.int32) - zp.astype(np.int32).reshape(shape if zp.size > 1 else [1] * q.ndim)).astype(
        np.float32
    ) * scale.astype(np.float32).reshape(shape)
    return value.astype(np.float32)


def _check_images(run, n: int, parts=("test", "val", "train")) -> np.ndarray:
    """Up to `n` real images of the run's split (test first, or in the order of
    `parts`), preprocessed as on the device."""
    from edgetune.runtime.preprocess import preprocess, read_image

    pairs = []
    for part in parts:
        pairs += run.split.parts[part][: n - len(pairs)]
        if len(pairs) >= n:
            break
    if not pairs:
        raise EdgetuneError(f"{run.dir}: its split has no images to check the export on.")
    return preprocess([read_image(p) for p, _ in pairs], run.spec)


def save_onnx(
    model,
    size: tuple[int, int],
    out: Path,
    precision: str,
    opset: int,
    activations: str,
    output_names: list[str],
    doc: str,
    calibration: np.ndarray | None = None,
):
    """torch.onnx.export of `model` (input `INPUT_NAME`, dynamic batch on the input
    and every output) to `out`, atomically; then identities removed and, for INT8,
    the weights' quantizers folded into int8 initializers. With `activations="uint8"`
    (ONNX Runtime), activations are shifted to uint8, after quantizers are added
    behind the convolutions ONNX Runtime would leave float, their scales measured on
    the preprocessed `calibration` images (none given: none added). Returns (the
    ModelProto, weights folded)."""
    import onnx
    import torch

    from edgetune.runtime.files import atomic_path

    example = torch.zeros(1, 3, *size)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *output_names]},
            do_constant_folding=True,
            dynamo=False,
        )
        proto = onnx.load(str(tmp))
        _remove_identities(proto)
        folded = _fold_weight_quantizers(proto) if precision == "int8" else 0
        if precision == "int8":
            _fold_weight_transposes(proto)
            dequantize_constants(proto)
        if precision == "int8" and activations == "uint8":
            if calibration is not None:
                quantize_layer_outputs(proto, calibration)
            shift_activations_to_uint8(proto)
        proto.doc_string = doc
        onnx.save(proto, str(tmp))
    return proto, folded


def check_options(precision: str, opset, activations: str, out: Path) -> None:
    if precision not in PRECISIONS:
        raise EdgetuneError(f"--precision {precision!r}: use fp32 or int8.")
    if not 13 <= int(opset) <= 21:
        raise EdgetuneError(
            f"--opset {opset}: use 13 to 21 (per-channel QuantizeLinear needs 13 or later; 17 is the default)."
        )
    if activations not in ("keep", "uint8"):
        raise EdgetuneError(
            f"--activations {activations!r}: use keep (as quantized, zero-point 0) or uint8 (ONNX Runtime on x86)."
        )
    if Path(out).suffix != ".onnx":
        raise EdgetuneError(f"--out {out}: the file name must end in .onnx.")


def static_checks(path: Path, proto, precision: str, activations: str = "keep") -> int:
    """onnx.checker, standard ops, the Q/DQ forms; raises naming what failed.
    Returns the number of quantized weights."""
    import onnx

    from edgetune.export import checks as C

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise EdgetuneError(f"Export {path} fails onnx.checker: {str(e).splitlines()[0]}") from None
    problems = C.qdq_problems(proto) + (C.activation_problems(proto, activations) if precision == "int8" else [])
    n_qdq = len(C.weight_dequantizers(proto))
    if precision == "int8" and n_qdq == 0:
        problems.append("no weight is quantized (no DequantizeLinear on a constant weight)")
    if precision == "fp32" and any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        problems.append("an fp32 export contains Q/DQ nodes")
    if any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        problems.append("BatchNormalization left unfolded")
    if problems:
        raise EdgetuneError(
            f"Export {path} fails its checks: "
            + "; ".join(problems[:6])
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
        )
    return n_qdq
