"""ONNX export of a run: fp32, or INT8 with standard QuantizeLinear/DequantizeLinear.

INT8: NNCF's fake quantizers become torch-native ones (`nncf.strip`), which the
exporter writes as Q/DQ pairs; the weights' Q is then applied offline, so weights
are stored as int8 initializers feeding a DequantizeLinear (4x smaller files, the
layout TensorRT and ONNX Runtime's quantization tools produce). BatchNorm is folded
into the convolutions (a quantized run was folded before calibration; an fp32
export is folded here). The batch dimension is dynamic. The checks of
`edgetune.export.checks` run after every export and raise on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.export.graph import (  # noqa: F401 - the graph side, also for export_onnx's callers
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISIONS,
    _check_images,
    added_output_quantizers,
    check_options,
    save_onnx,
    shift_activations_to_uint8,
    static_checks,
)

logger = log.get(__name__)
MIN_AGREEMENT = 0.99
CALIBRATION_IMAGES = 32


def float_model(run):
    """The float weights of a run: its own, or a quantized run's float parent's."""
    from edgetune.run import load_run

    if not run.quantized:
        return run.build_model()
    parent = run.info.get("parent")
    if not parent or not Path(parent).is_dir():
        raise EdgetuneError(
            f"{run.dir} is a '{run.stage}' run whose float parent ({parent}) is gone; an fp32 export needs it. "
            "Export fp32 from the float or pruned run instead."
        )
    return load_run(parent).build_model()


def _model_for(run, precision: str):
    """(model to export, the PyTorch reference for the agreement check)."""
    import torch

    from edgetune.compress.fold import fold_batchnorm, fold_layer_scale

    size = tuple(run.spec.size)
    if precision == "int8":
        if not run.quantized:
            raise EdgetuneError(
                f"{run.dir} is a '{run.stage}' run, not quantized: an int8 export needs a quantized run. "
                f"Run `edgetune quantize {run.dir} --out RUN_DIR` first, or export with --precision fp32."
            )
        import nncf

        reference = run.build_model()
        return nncf.strip(reference, example_input=torch.zeros(1, 3, *size)).eval(), reference
    reference = float_model(run)
    import copy

    model = copy.deepcopy(reference)
    fold_batchnorm(model, size)
    fold_layer_scale(model)
    return model.eval(), reference


def export_onnx(
    run,
    out: Path,
    precision: str = "int8",
    opset: int = 17,
    check: bool = True,
    activations: str = "keep",
    check_images: int | None = None,
) -> dict:
    """Write `run`'s model to `out` as ONNX, as its task exports it, and check it;
    returns what was written (path, precision, input/output names, layout, input
    shape, opset, activations, checks).

    `activations` (INT8 only): "keep" writes them as quantized, zero-point 0
    everywhere (TensorRT needs a run quantized with `--activations int8`; OpenVINO
    and ONNX Runtime take either); "uint8" shifts int8 activations to uint8 with
    zero-point 128, numerically identical, so that ONNX Runtime on x86 fuses every
    Conv (see `shift_activations_to_uint8`)."""
    from edgetune.run import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    check_options(precision, opset, activations, out)
    return run.task_impl.export(run, Path(out), precision, opset, check, activations, check_images=check_images)


def export_trained(
    task, run, out: Path, precision: str, opset: int, check: bool, activations: str, check_images: int | None = None
) -> dict:
    """The export of a model trained by the training loop: the run's (quantized or
    float) model with what its task's graph adds (`task.deploy_module`), outputs
    named as the task's runtime half reads them, then the checks."""
    from edgetune.runtime.files import sha256_file

    model, reference = _model_for(run, precision)
    model, reference = task.deploy_module(model).eval(), task.deploy_module(reference).eval()
    outputs = list(task.session.outputs)
    h, w = run.spec.size
    doc = f"edgetune {run.model_name} ({run.stage}) {precision}"
    # the added output quantizers' scales come from training images, never the test split
    calibration = _check_images(run, CALIBRATION_IMAGES, ("train", "val")) if activations == "uint8" else None
    proto, folded = save_onnx(model, (h, w), out, precision, opset, activations, outputs, doc, calibration)
    result = {
        "path": str(out),
        "precision": precision,
        "input_name": INPUT_NAME,
        "output_name": outputs[0],
        "output_names": outputs,
        "layout": "NCHW",
        "input_shape": [-1, 3, int(h), int(w)],
        "opset": int(opset),
        "activations": activations if precision == "int8" else None,
        "output_quantizers": added_output_quantizers(proto),
        "sha256": sha256_file(out),
        "size_mb": out.stat().st_size / 2**20,
        "checks": {},
    }
    if check:
        images = _check_images(run, check_images or 200)
        result["checks"] = run_checks(out, proto, precision, reference, images, folded, activations, task.export_checks)
    logger.info("Exported %s (%s, %s) to %s (%.2f MB).", run.model_name, run.stage, precision, out, result["size_mb"])
    return result


def run_checks(
    path: Path,
    proto,
    precision: str,
    reference,
    images: np.ndarray,
    folded: int = 0,
    activations: str = "keep",
    compare=None,
) -> dict:
    """Every post-export check; raises EdgetuneError naming what failed. `compare`:
    the graph against its PyTorch `reference` on `images` (the task's; by default
    the first output's top-1 agreement, `compare_logits`)."""
    from edgetune.export import checks as C

    n_qdq = static_checks(path, proto, precision, activations)
    return {
        "onnx_checker": "passed",
        "custom_ops": [],
        "weight_qdq": n_qdq,
        "weights_folded_to_int8": folded,
        "activation_qdq": C.activation_types(proto),
        "qdq_problems": [],
        **(compare or compare_logits)(path, reference, images),
    }


def compare_logits(path: Path, reference, images: np.ndarray, min_agreement: float = MIN_AGREEMENT) -> dict:
    """ONNX Runtime's first output against the PyTorch module's as class scores:
    the top-1 class must agree on the images where PyTorch is decisive."""
    import torch

    from edgetune.export import checks as C

    with torch.no_grad():
        ref = np.concatenate(
            [reference(torch.from_numpy(images[i : i + 32])).float().numpy() for i in range(0, len(images), 32)]
        )
    cmp = C.compare_with_torch(path, ref, images)
    if cmp["decisive_agreement"] < min_agreement:
        raise EdgetuneError(
            f"Export {path}: ONNX Runtime and PyTorch agree on the top-1 class for only "
            f"{100 * cmp['decisive_agreement']:.1f}% of the {cmp['decisive_images']} images where PyTorch is decisive "
            f"(top-2 logit margin > {C.TIE_MARGIN}; at least {100 * min_agreement:.0f}% required; "
            f"{100 * cmp['agreement']:.1f}% of all {cmp['images']}); largest logit difference "
            f"{cmp['max_logit_diff']:.4g}. The exported graph computes something else than the trained model."
        )
    logger.info(
        "Export checks passed: ONNX Runtime vs PyTorch top-1 agreement %.1f%% on %d images (%.1f%% on the %d decisive "
        "ones), largest logit difference %.4g.",
        100 * cmp["agreement"],
        cmp["images"],
        100 * cmp["decisive_agreement"],
        cmp["decisive_images"],
        cmp["max_logit_diff"],
    )
    summary = (
        f"top-1 agreement with PyTorch {100 * cmp['agreement']:.1f}% on {cmp['images']} images, largest logit "
        f"difference {cmp['max_logit_diff']:.4g}"
    )
    return {**cmp, "min_agreement": min_agreement, "summary": summary}
