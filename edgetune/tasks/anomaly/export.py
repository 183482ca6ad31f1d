"""ONNX export of a fitted PatchCore run: one graph, input `input` (N, 3, H, W),
outputs `score` (N) and `map` (N, H, W), raw distances (the bundle's manifest
holds the normalisation), dynamic batch.

INT8: NNCF post-training quantization of the patch distances (the backbone's
convolutions but the stem, and the bank search's Linear: int8 per-row bank, one
activation scale), calibrated on normal training images only with a calibration recipe;
then the same steps as a classifier's export (`nncf.strip`, weights folded to
int8, optional uint8 activations for ONNX Runtime). The min over the bank, the
patch norms and the map smoothing stay fp32.

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
EMBEDDER_POOL = r"embedder/pool/.*"  # NNCF's names for PatchEmbedder.pool's ops
SEARCH = r"search/.*"  # and for the bank search's
# The image-level score stays float: its statistics (a mean and a spread of the deepest map)
# and its search over a few hundred image embeddings cost next to nothing.
IMAGE_SCORE = [r"embedder/stats/.*", r"image_search/.*"]
# The search's sum ||a||^2 + min(...) is a small difference of large terms: a quantizer
# on either term (NNCF quantizes an add's inputs) swamps it, so only the Linear is int8.
SEARCH_SUM = r"search/(mul|sum|amin|add|clamp_min)/.*"
# INT8 search where it moves the nearest-neighbour distances by at most this (median).
# Measured: 0.18% on magnetic tiles (efficientnet_lite0, 224 px), which kept image AUROC;
# 1.2% on the tests' generated textures (random weights), which flipped 1 flag in 80.
MAX_SEARCH_ERROR = 0.005


def normal_split(run):
    """The run's split with only the normal images in train and val: what
    calibration may draw from."""
    return dataclasses.replace(
        run.split, parts={k: [(p, y) for p, y in v if y == 0] if k != "test" else v for k, v in run.split.parts.items()}
    )


def quantized_patchcore(run, calibration: str = "default", count: int | None = None, activations: str = "int8"):
    """(PatchCore with NNCF-quantized patch distances, quantization record)."""
    from edgetune.compress.calibration import load_recipe, select
    from edgetune.compress.quantize import calibration_tensors, quantize_model
    from edgetune.tasks.anomaly.fit import load_patchcore

    model = load_patchcore(run)
    recipe = load_recipe(calibration)
    pairs, calib = select(normal_split(run), recipe, count)
    logger.info(
        "Calibrating INT8 quantizers of the %s patch distances on %d normal images (recipe '%s', hash %s).",
        run.model_name,
        calib["count"],
        recipe.name,
        calib["hash"][:12],
    )
    tensors = calibration_tensors(run, pairs)
    error = search_error(model, tensors)
    search = "int8" if error <= MAX_SEARCH_ERROR else "fp32"
    logger.info(
        "Bank search in %s: int8 moves the nearest-neighbour distances of the calibration patches by %.1f%% "
        "(median; int8 up to %.1f%%).",
        search,
        100 * error,
        100 * MAX_SEARCH_ERROR,
    )
    # The embedder's own 3x3 average pool (--patch-features fine) stays float: a quantizer on its output
    # made OpenVINO's low-precision transformations compute scores 8x off (measured:
    # 0.84 absolute vs ONNX Runtime on the same file).
    quantized, record = quantize_model(
        model.patches,
        tensors,
        tuple(run.spec.size),
        ignore=[stem_scope(model.embedder), SEARCH if search == "fp32" else SEARCH_SUM]
        + ([EMBEDDER_POOL] if model.embedder.pool is not None else [])
        + (IMAGE_SCORE if model.image_search is not None else []),
        activations=activations,
    )
    model.patches = quantized
    record = {**record, "mode": "ptq", "calibration": calib, "search": search, "search_error": round(error, 4)}
    return model.eval(), record


def stem_scope(embedder) -> str:
    """NNCF's names for the backbone's first Conv (the stem), which stays float. Its
    input is the image itself, and the patch distances read the fine detail that
    int8 rounding of the normalised pixels takes away: INT8 cost ELPV 1.3 image AUROC
    points with the stem quantized, 0.05 with it float (magnetic tiles 0.34 and 0.15),
    at no latency cost beyond run-to-run noise."""
    import re

    import torch

    name = next(n for n, m in embedder.features.named_modules() if isinstance(m, torch.nn.Conv2d))
    return re.escape(f"embedder/features/{name.replace('.', '/')}/") + ".*"


def search_error(model, tensors) -> float:
    """How far INT8 moves the nearest-neighbour distances: the median, over the
    calibration images' patches, of |d_int8 - d| / d, with the bank int8 per row
    and the patches int8 on one symmetric scale (what NNCF's quantizers do). The
    distance is a small difference of large terms (||a||^2 + ||b||^2 - 2ab): where
    the normal patches lie very close to the bank, rounding the product swamps
    it, and the search stays float."""
    import torch

    search = model.patches.search
    with torch.no_grad():
        emb = torch.cat([model.embedder.embed(x)[0] for x in tensors[:32]])
        a = emb.flatten(2).transpose(1, 2).reshape(-1, emb.shape[1]) - search.mean
        w = search.rows.weight
        w_scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        a_scale = a.abs().amax().clamp_min(1e-12) / 127
        wq = (w / w_scale).round().clamp(-127, 127) * w_scale
        aq = (a / a_scale).round().clamp(-128, 127) * a_scale
        exact = (a @ w.T + search.rows.bias).amin(1) + (a * a).sum(1)
        rounded = (aq @ wq.T + search.rows.bias).amin(1) + (aq * aq).sum(1)
        d, dq = exact.clamp_min(0).sqrt(), rounded.clamp_min(0).sqrt()
    return float(((dq - d).abs() / d.clamp_min(1e-12)).median())


def _for_export(model, precision: str, size):
    """The module torch.onnx.export traces: BatchNorm folded (fp32) or NNCF's
    quantizers made torch-native Q/DQ (int8)."""
    import torch

    from edgetune.compress.fold import fold_batchnorm

    model = copy.deepcopy(model)
    if precision == "int8":
        import nncf

        model.patches = nncf.strip(model.patches, example_input=torch.zeros(1, 3, *size))
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
    search = search_share(model, out, size, opset) if check and precision == "fp32" else None
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
        **({"search": search} if search else {}),
    }


def search_share(model, path: Path, size, opset: int) -> dict:
    """The bank search's share of the fp32 graph's latency on ONNX Runtime here:
    the graph at `path` against the same graph with a one-row bank, timed in
    alternating bursts (batch 1, 2 threads)."""
    import tempfile

    from edgetune.export.checks import ort_session
    from edgetune.export.graph import save_onnx
    from edgetune.runtime.timing import Policy, time_alternating

    bare = copy.deepcopy(model)
    bare.set_bank(model.patches.search.bank[:1])
    with tempfile.TemporaryDirectory() as tmp:
        bare_path = Path(tmp) / "bare.onnx"
        save_onnx(_for_export(bare, "fp32", size), size, bare_path, "fp32", opset, "keep", [SCORE, MAP], "")
        x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
        sessions = {"full": ort_session(path, threads=2), "bare": ort_session(bare_path, threads=2)}
        fns = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}
        t = time_alternating(fns, Policy(warmup=3, min_time_s=1.0, min_runs=20), rounds=4)
    full, bare_ms = (t[k].stats()["p50_ms"] for k in ("full", "bare"))
    share = max(0.0, 1 - bare_ms / full)
    rows = int(model.patches.search.rows.out_features)
    logger.info(
        "The bank search (%d rows) takes %.0f%% of the fp32 graph's p50 on ONNX Runtime here (%.2f of %.2f ms).",
        rows,
        100 * share,
        full - bare_ms,
        full,
    )
    return {"rows": rows, "share": round(share, 3), "fp32_ms_p50": round(full, 3), "without_ms_p50": round(bare_ms, 3)}


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
    quantize_activations: str = "int8",
) -> dict:
    """The (precision, activations) variant as OUT_DIR/model.TAG.onnx (or `path`).
    With a `cache` dict, one PTQ serves every int8 variant of a build.
    `quantize_activations`: "int8" (all signed, what TensorRT needs) or "auto"
    (NNCF's choice: unsigned after ReLU-like layers, which lets ONNX Runtime run
    those Convs on its integer kernels)."""
    from edgetune.run import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    cache = {} if cache is None else cache
    tag = precision if precision != "int8" or activations == "keep" else f"{precision}-{activations}"
    model = None
    if precision == "int8":
        if "quantized" not in cache:
            cache["quantized"] = quantized_patchcore(run, calibration, calib_count, activations=quantize_activations)
        model = cache["quantized"][0]
    path = Path(path) if path is not None else Path(out_dir) / f"model.{tag}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = export_patchcore(run, path, precision, opset, activations, model=model, check=check)
    if precision == "int8":
        info["quantization"] = {k: v for k, v in cache["quantized"][1].items() if k != "nncf_config"}
    return info
