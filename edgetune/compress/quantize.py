"""INT8 quantization with NNCF: quantizers initialised on a calibration recipe's
images (`nncf.quantize`), then, for QAT, fine-tuned with the shared training loop.

Symmetric INT8 throughout: weights per output channel, activations per tensor,
zero-point 0 everywhere (what TensorRT's explicit quantization needs). BatchNorm
is folded into the convolutions first, so the exported graph is Conv + Q/DQ that
runtimes fuse into integer kernels. The run stores NNCF's config (where each
quantizer sits) plus the state dict; `restore_quantized` rebuilds it. The stage
driver (calibration recipe, QAT, records) is edgetune/stages/quantize.py."""

from __future__ import annotations

import re

import torch

from edgetune import log
from edgetune.errors import EdgetuneError

logger = log.get(__name__)


def import_nncf():
    """nncf, with its INFO chatter (it resets its logger on import) kept for -vv."""
    import logging
    import os

    # NNCF compiles its CPU kernels on first use and gives up after 60 s; a busy
    # 2-core machine takes longer than that.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    import nncf

    logging.getLogger("nncf").setLevel(logging.DEBUG if logging.getLogger().level <= logging.DEBUG else logging.WARNING)
    return nncf


def _quantization_parameters(overflow_fix: str = "enable"):
    """NNCF's PERFORMANCE preset: symmetric INT8, weights per output channel.
    Activations are forced per tensor (NNCF would otherwise pick per-channel
    ones in front of depthwise convolutions, which runtimes cannot fuse).
    The overflow fix keeps weights in 7 bits of the int8 range: x86 CPUs without
    VNNI (AVX2) multiply uint8 x int8 pairs into saturating int16, and full-range
    weights make ONNX Runtime's integer kernels disagree with the trained model
    (measured on a tiny model: 88% top-1 agreement without, 100% with)."""
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    return AdvancedQuantizationParameters(
        overflow_fix=OverflowFix[overflow_fix.upper()],
        activations_quantization_params=QuantizationParameters(
            num_bits=8, mode=QuantizationScheme.SYMMETRIC, per_channel=False
        ),
    )


def _ignored_scope(patterns: list[str]):
    import nncf

    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise EdgetuneError(
                f"--ignore {p!r} is not a valid regular expression ({e}). Example: --ignore 'classifier' or --ignore "
                "'blocks\\.0\\..*'."
            ) from None
    return nncf.IgnoredScope(patterns=list(patterns)) if patterns else None


def _layer_names(model: torch.nn.Module, size) -> list[str]:
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    graph = build_nncf_graph(model, torch.zeros(1, 3, *size))
    return sorted(n.node_name for n in graph.get_all_nodes() if n.node_type in ("conv2d", "linear", "matmul"))


def quantize_model(
    model: torch.nn.Module,
    calib_tensors: list[torch.Tensor],
    size: tuple[int, int],
    ignore: list[str] = (),
    fold_bn: bool = True,
    overflow_fix: str = "enable",
    activations: str = "auto",
):
    """The NNCF-quantized model (quantizers initialised, not trained) and its record."""
    nncf = import_nncf()

    from edgetune.compress.fold import fix_input_size, fold_batchnorm, fold_layer_scale

    model = model.cpu().eval()
    fixed_size = fix_input_size(model, size)
    folded = fold_batchnorm(model, size) if fold_bn else []
    scales = fold_layer_scale(model) if fold_bn else 0
    scope = _ignored_scope(list(ignore))
    try:
        qmodel = nncf.quantize(
            model,
            nncf.Dataset(calib_tensors),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(calib_tensors),
            ignored_scope=scope,
            advanced_parameters=_quantization_parameters(overflow_fix),
        )
    except nncf.ValidationError as e:
        if scope is not None and "ignored" in str(e).lower():
            names = _layer_names(model, size)
            raise EdgetuneError(
                f"--ignore {' '.join(ignore)}: {str(e).splitlines()[0]} Patterns are regular expressions matched from "
                f"the start of layer names such as {', '.join(names[:3])}, ..., {names[-1]}."
            ) from None
        raise EdgetuneError(
            f"NNCF cannot quantize this model: {str(e).splitlines()[0]}. Keep the failing layer in float with --ignore "
            "LAYER_PATTERN."
        ) from None
    except Exception as e:
        raise EdgetuneError(
            f"NNCF cannot quantize this model: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "Keep the failing layer in float with --ignore LAYER_PATTERN (a regular expression over layer names)."
        ) from None
    signed = force_signed_activations(qmodel) if activations == "int8" else 0
    from nncf.torch import get_config

    record = {
        "tool": f"nncf {nncf.__version__}",
        "nncf_config": get_config(qmodel),
        "fold_bn": bool(folded),
        "folded_pairs": len(folded),
        "folded_layer_scales": scales,
        "fixed_input_size": fixed_size,
        "weights": "int8 symmetric per-channel (output axis)",
        "zero_point": 0,
        "activations": activations,
        "activation_types": "int8 per-tensor"
        if activations == "int8"
        else "per-tensor, uint8 after ReLU, int8 elsewhere",
        "made_signed": signed,
        "overflow_fix": overflow_fix,
        "ignore": list(ignore),
        "quantizers": _count_quantizers(qmodel),
    }
    return qmodel, record


def force_signed_activations(qmodel) -> int:
    """Make every activation quantizer signed int8. NNCF picks uint8 (zero-point 0)
    after ReLU-like layers; TensorRT's explicit quantization takes only int8. The
    cost: one bit less for non-negative tensors (QAT trains with it), and ONNX
    Runtime can no longer drop the ReLU/Clip in front of a quantizer, so its Convs
    stay in float there: use `auto` for ONNX Runtime targets."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import SymmetricQuantizer

    n = 0
    for _, m in get_hook_storage(qmodel).named_hooks():
        if isinstance(m, SymmetricQuantizer) and not m.per_channel and not m.signed:
            m.signed = True
            n += 1
    return n


def _count_quantizers(qmodel) -> dict:
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    n = {"per_channel": 0, "per_tensor": 0}
    for name, m in get_hook_storage(qmodel).named_hooks():
        if isinstance(m, BaseQuantizer):
            n["per_channel" if m.per_channel else "per_tensor"] += 1
    return n


def restore_quantized(model: torch.nn.Module, run, state: dict) -> torch.nn.Module:
    """Rebuild a quantized run's model from its NNCF config and state dict
    (`model` is the run's fresh float architecture, already resized if pruned)."""
    model = rebuild_quantized(model, run.info["quant"], tuple(run.spec.size))
    model.load_state_dict(state)
    return model


def rebuild_quantized(model: torch.nn.Module, record: dict, size: tuple[int, int]) -> torch.nn.Module:
    """The quantizers `quantize_model` placed (its `record`), on `model`'s float
    architecture, not yet initialised: BatchNorm folded as it was, then NNCF's config."""
    import_nncf()
    from nncf.torch import load_from_config

    from edgetune.compress.fold import fix_input_size, fold_batchnorm, fold_layer_scale

    if record.get("fixed_input_size"):
        fix_input_size(model, size)
    if record.get("fold_bn"):
        fold_batchnorm(model, size, check=False)
    if record.get("folded_layer_scales"):  # runs quantized before layer-scale folding keep their multiply
        fold_layer_scale(model)
    return load_from_config(model.cpu().eval(), record["nncf_config"])


def broadcast_quantizers(qmodel: torch.nn.Module, device: torch.device) -> int:
    """Give every process of the initialised torch.distributed group rank 0's
    quantizer parameters, the way NNCF's distributed QAT does it
    (`QuantizationController.distributed()` in NNCF 2.x): each quantizer's own
    `broadcast_initialized_params`, in an order every rank shares (sorted names).
    Returns how many quantizers were shared."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    quantizers = sorted((name, m) for name, m in get_hook_storage(qmodel).named_hooks() if isinstance(m, BaseQuantizer))
    with torch.no_grad():  # an in-place copy into trainable scales, not a step autograd should see
        for _, q in quantizers:
            q.to(device)  # NCCL broadcasts GPU tensors only
            q.broadcast_initialized_params(src=0)
            q.set_levels()  # the integer range follows the broadcast bits and sign
    return len(quantizers)


def calibration_tensors(run, pairs) -> list[torch.Tensor]:
    from edgetune.data.transforms import EvalTransform, load_rgb

    t = EvalTransform(run.spec)
    return [t(load_rgb(p)).unsqueeze(0) for p, _ in pairs]
