"""ONNX export of a fitted PatchCore run: one graph, input `input` (N, 3, H, W),
outputs `score` (N) and `map` (N, H, W), raw distances (the bundle's manifest
holds the normalisation), dynamic batch.

INT8: NNCF post-training quantization of the patch embedder (the backbone's
convolutions), calibrated on normal training images only with a calibration
recipe; then the same steps as a classifier's export (`nncf.strip`, weights
folded to int8, optional uint8 activations for ONNX Runtime). The memory bank,
the distance MatMul and the map smoothing stay fp32: TensorRT runs that MatMul
in FP16 (a note of its rules check, not a problem).

Checks after every export: the static ones of `edgetune.export.onnx`, then ONNX
Runtime against the PyTorch module the graph was exported from on real images:
Spearman rank correlation of the image scores >= MIN_SPEARMAN."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime.tasks.anomaly import MAP, SCORE

logger = log.get(__name__)
# The export must rank images as the module it came from does. Not 0.99: ONNX Runtime's
# integer kernels round otherwise than NNCF's simulation, and many normal images score
# alike; efficientnet_lite0 INT8 (uint8 activations) on 64 ELPV test cells measured
# 0.9867 (largest raw difference 0.36 of ~30). A broken graph falls far lower (0.84 was
# OpenVINO's quantized-pool fault, see quantized_patchcore).
MIN_SPEARMAN = 0.95
EMBEDDER_POOL = r"pool/.*"  # NNCF's names for PatchEmbedder.pool's ops


def normal_split(run):
    """The run's split with only the normal images in train and val: what
    calibration may draw from."""
    return dataclasses.replace(
        run.split, parts={k: [(p, y) for p, y in v if y == 0] if k != "test" else v for k, v in run.split.parts.items()}
    )


def quantized_patchcore(run, calibration: str = "default", count: int | None = None, activations: str = "int8"):
    """(PatchCore with an NNCF-quantized embedder, quantization record)."""
    from edgetune.compress.calibration import load_recipe, select
    from edgetune.compress.quantize import calibration_tensors, quantize_model
    from edgetune.tasks.anomaly.fit import load_patchcore

    model = load_patchcore(run)
    recipe = load_recipe(calibration)
    pairs, calib = select(normal_split(run), recipe, count)
    logger.info(
        "Calibrating INT8 quantizers of the %s embedder on %d normal images (recipe '%s', hash %s).",
        run.model_name,
        calib["count"],
        recipe.name,
        calib["hash"][:12],
    )
    # The embedder's own 3x3 average pool stays float: a quantizer on its output
    # (feeding the bank's MatMul) made OpenVINO's low-precision transformations
    # compute scores 8x off (measured: 0.84 absolute vs ONNX Runtime on the same file).
    qemb, record = quantize_model(
        model.embedder,
        calibration_tensors(run, pairs),
        tuple(run.spec.size),
        ignore=[EMBEDDER_POOL],
        activations=activations,
    )
    model.embedder = qemb
    return model.eval(), {**record, "mode": "ptq", "calibration": calib}


def _for_export(model, precision: str, size):
    """The module torch.onnx.export traces: BatchNorm folded (fp32) or NNCF's
    quantizers made torch-native Q/DQ (int8)."""
    import torch

    from edgetune.compress.fold import fold_batchnorm

    model = copy.deepcopy(model)
    if precision == "int8":
        import nncf

        model.embedder = nncf.strip(model.embedder, example_input=torch.zeros(1, 3, *size))
    else:
        fold_batchnorm(model.embedder, size)
    return model.eval()


def export_patchcore(
    run,
    out: Path,
    precision: str = "fp32",
    opset: int = 17,
    activations: str = "keep",
    model=None,
    check_images: int = 64,
    check: bool = True,
) -> dict:
    """Write `run`'s PatchCore graph to `out` (for int8, `model` is the quantized
    module from `quantized_patchcore`); check it unless told not to; return the
    export's record."""
    from edgetune.export.graph import INPUT_NAME, check_options, save_onnx, static_checks
    from edgetune.run import Run, load_run
    from edgetune.runtime.files import sha256_file
    from edgetune.tasks.anomaly.fit import load_patchcore

    if not isinstance(run, Run):
        run = load_run(run)
    check_options(precision, opset, activations, out)
    out = Path(out)
    if model is None:
        if precision == "int8":
            raise EdgetuneError("An int8 anomaly export needs the quantized module (quantized_patchcore).")
        model = load_patchcore(run)
    size = tuple(run.spec.size)
    proto, folded = save_onnx(
        _for_export(model, precision, size),
        size,
        out,
        precision,
        opset,
        activations,
        [SCORE, MAP],
        f"edgetune PatchCore {run.model_name} {precision}",
    )
    checks = {}
    if check:
        checks = {
            "onnx_checker": "passed",
            "weight_qdq": static_checks(out, proto, precision, activations),
            "weights_folded_to_int8": folded,
            **compare_scores(out, model, run, check_images),
        }
        logger.info(
            "ONNX Runtime vs PyTorch: Spearman %.4f of the scores on %d images.", checks["spearman"], checks["images"]
        )
    h, w = size
    logger.info(
        "Exported PatchCore %s (%s) to %s (%.2f MB).", run.model_name, precision, out, out.stat().st_size / 2**20
    )
    return {
        "path": str(out),
        "precision": precision,
        "input_name": INPUT_NAME,
        "output_names": [SCORE, MAP],
        "layout": "NCHW",
        "input_shape": [-1, 3, int(h), int(w)],
        "opset": int(opset),
        "activations": activations if precision == "int8" else None,
        "sha256": sha256_file(out),
        "size_mb": out.stat().st_size / 2**20,
        "checks": checks,
    }


def compare_scores(path: Path, model, run, n: int) -> dict:
    """ONNX Runtime's raw scores and maps against `model`'s on up to `n` images
    of the split (test first); raises when the score ranks disagree."""
    import torch
    from scipy.stats import spearmanr

    from edgetune.export.checks import ort_session
    from edgetune.export.graph import _check_images

    images = _check_images(run, n)
    with torch.no_grad():
        ref = [model(torch.from_numpy(images[i : i + 16])) for i in range(0, len(images), 16)]
    ref_s = np.concatenate([s.numpy() for s, _ in ref])
    ref_m = np.concatenate([m.numpy() for _, m in ref])
    sess = ort_session(path)
    got = [sess.run(None, {sess.get_inputs()[0].name: images[i : i + 16]}) for i in range(0, len(images), 16)]
    got_s = np.concatenate([g[0] for g in got])
    got_m = np.concatenate([g[1] for g in got])
    rho = float(spearmanr(ref_s, got_s).statistic) if len(images) > 2 else 1.0
    out = {
        "images": int(len(images)),
        "spearman": rho,
        "min_spearman": MIN_SPEARMAN,
        "max_score_diff": float(np.abs(ref_s - got_s).max()),
        "max_map_diff": float(np.abs(ref_m - got_m).max()),
        "summary": f"score ranks agree with PyTorch (Spearman {rho:.4f}) on {len(images)} images",
    }
    if not rho >= MIN_SPEARMAN:
        raise EdgetuneError(
            f"Export {path}: ONNX Runtime's anomaly scores rank {len(images)} images differently from PyTorch's "
            f"(Spearman {rho:.4f} < {MIN_SPEARMAN}; largest score difference {out['max_score_diff']:.4g}). The "
            "exported graph computes something else than the fitted model."
        )
    return out


def export_variant(
    run,
    out_dir: Path,
    precision: str,
    activations: str = "keep",
    opset: int = 17,
    calibration: str = "default",
    calib_count: int | None = None,
    cache: dict | None = None,
    path: Path | None = None,
    check: bool = True,
) -> dict:
    """The (precision, activations) variant as OUT_DIR/model.TAG.onnx (or `path`).
    With a `cache` dict, one PTQ (signed int8 activations, which every runtime
    takes) serves every int8 variant of a build."""
    from edgetune.run import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    cache = {} if cache is None else cache
    tag = precision if precision != "int8" or activations == "keep" else f"{precision}-{activations}"
    model = None
    if precision == "int8":
        if "quantized" not in cache:
            cache["quantized"] = quantized_patchcore(run, calibration, calib_count, activations="int8")
        model = cache["quantized"][0]
    path = Path(path) if path is not None else Path(out_dir) / f"model.{tag}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = export_patchcore(run, path, precision, opset, activations, model=model, check=check)
    if precision == "int8":
        info["quantization"] = {k: v for k, v in cache["quantized"][1].items() if k != "nncf_config"}
    return info
