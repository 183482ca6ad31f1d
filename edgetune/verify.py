"""Parity of the training path and the device path on the same image files.

training side: PIL decoding + `EvalTransform` (the run's preprocessing, by the
               same function the device runs) + the run's PyTorch model
device side:   OpenCV decoding + the bundle's manifest preprocessing + its runtime

Both must pick the same class and give close logits. A mismatch here is a
preprocessing bug (RGB/BGR, size, interpolation, mean/std), which people most often
take for quantization loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError

# Largest logit difference allowed, relative to the largest |logit| of the training
# side: float artifacts must match to rounding; quantized ones within quantization error.
MAX_DIFF = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.25}
# An INT8 anomaly model's scores move by more than a classifier's logits (a nearest-
# neighbour distance adds up quantization error over every feature, and normal images'
# scores differ by little, so their order shuffles): its check is the flags' agreement,
# and the score difference only when --max-diff is given; the rank correlation of the
# scores is reported.


@dataclass
class VerifyResult:
    n: int
    agreement: float
    max_abs_diff: float
    max_rel_diff: float
    min_agreement: float
    max_diff: float
    spec_differences: dict  # preprocessing field -> (run, bundle), when they differ
    worst: list[dict]  # the images with the largest differences
    spearman: float | None = None  # an INT8 anomaly model: rank correlation of the scores (reported)
    diff_checked: bool = True  # False: an INT8 anomaly model without --max-diff

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement and (not self.diff_checked or self.max_rel_diff <= self.max_diff)

    def to_dict(self) -> dict:
        return {**self.__dict__, "passed": self.passed}


def list_images(folder: Path) -> list[str]:
    from edgetune.data.sources import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise EdgetuneError(
            f"--images {folder}: no such folder. Give a folder of image files (sub-folders are searched too)."
        )
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgetuneError(f"--images {folder}: holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return files


def verify_bundle(
    bundle_path: Path,
    images: Path,
    run_dir: Path | None = None,
    min_agreement: float = 0.99,
    max_diff: float | None = None,
    precision: str | None = None,
    json_file: Path | None = None,
) -> VerifyResult:
    from edgetune.bench.artifacts import Artifact, Labelled, open_artifact, predict, session_logits
    from edgetune.run import is_run, load_run

    art = open_artifact(bundle_path, "BUNDLE")
    if art.bundle is None:
        raise EdgetuneError(
            f"BUNDLE {bundle_path} is a run directory; verify takes a bundle (edgetune build) and, with --run, the run it came from."
        )
    bundle = art.bundle
    src = run_dir or bundle.source_run
    if src is None or not is_run(src):
        raise EdgetuneError(
            f"Bundle {bundle_path}: its source run {src} is not on this machine. Pass --run RUN_DIR (the run the bundle was built from)."
        )
    run = load_run(src)
    if list(run.classes) != list(bundle.classes):
        raise EdgetuneError(
            f"Run {run.dir} has classes {run.classes} but bundle {bundle_path} has {bundle.classes}: --run is not the bundle's source run."
        )
    files = list_images(images)
    pairs = [(p, 0) for p in files]  # labels are not needed: both sides are compared with each other
    session = bundle.open(precision=precision)
    prec = session.precision
    limit = MAX_DIFF.get(prec, 0.25) if max_diff is None else max_diff
    int8_anomaly = bundle.task == "anomaly" and prec == "int8"
    train_side = predict(Artifact(run.dir, run=run), Labelled(pairs, run.classes, "verify"))
    device_side = session_logits(session, files, desc=f"{bundle.name} ({session.name})")
    diff = np.abs(train_side - device_side)
    scale = max(float(np.abs(train_side).max()), 1e-6)
    per_image = diff.max(axis=1)
    worst = np.argsort(-per_image)[:5]
    spec_diff = {
        k: (v, bundle.spec.to_dict()[k]) for k, v in run.spec.to_dict().items() if bundle.spec.to_dict()[k] != v
    }
    result = VerifyResult(
        n=len(files),
        agreement=float((train_side.argmax(1) == device_side.argmax(1)).mean()),
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(diff.max() / scale),
        min_agreement=min_agreement,
        max_diff=limit,
        spec_differences=spec_diff,
        worst=[
            {
                "image": files[i],
                "max_abs_diff": float(per_image[i]),
                "training": int(train_side[i].argmax()),
                "device": int(device_side[i].argmax()),
            }
            for i in worst
        ],
        spearman=_score_ranks(train_side, device_side) if int8_anomaly else None,
        diff_checked=not int8_anomaly or max_diff is not None,
    )
    _print(result, bundle, run, prec, session.name)
    if json_file:
        from edgetune.runtime.files import write_json

        write_json(json_file, result.to_dict())
    return result


def _score_ranks(train_side: np.ndarray, device_side: np.ndarray) -> float:
    from scipy.stats import spearmanr

    from edgetune.runtime.anomaly import logits_scores

    return (
        float(spearmanr(logits_scores(train_side), logits_scores(device_side)).statistic)
        if len(train_side) > 2
        else 1.0
    )


def _print(r: VerifyResult, bundle, run, precision: str, runtime: str) -> None:
    from edgetune.runtime.anomaly import LOGIT_SCALE

    c = log.console
    c.print(f"Parity of {bundle.name} ({runtime}, {precision}) against run {run.dir} (PyTorch) on {r.n} images:")
    if r.spearman is not None:
        c.print(f"  anomalous flags agree on {r.agreement:.2%}  (minimum {r.min_agreement:.2%})")
        checked = (
            f"{r.max_rel_diff:.2%} of the largest logit; limit {r.max_diff:.2%}"
            if r.diff_checked
            else "INT8: reported, not checked"
        )
        c.print(
            f"  score rank correlation (Spearman) {r.spearman:.4f}, largest score difference {r.max_abs_diff / LOGIT_SCALE:.4g} ({checked})"
        )
    else:
        c.print(f"  top-1 agreement   {r.agreement:.2%}  (minimum {r.min_agreement:.2%})")
        c.print(
            f"  max logit diff    {r.max_abs_diff:.4g}  ({r.max_rel_diff:.2%} of the largest logit; limit {r.max_diff:.2%} for {precision})"
        )
    for k, (a, b) in r.spec_differences.items():
        c.print(f"  [yellow]preprocessing differs[/yellow]: {k} is {a} in the run but {b} in the bundle")
    if r.passed:
        c.print("[green]PASS[/green]: the device path reproduces the training path.")
        return
    c.print(
        "[red bold]FAIL[/red bold]: the device path does not reproduce the training path. Look first at the preprocessing "
        "(channel order RGB/BGR, input size, interpolation, mean/std) before blaming quantization. Largest differences:"
    )
    for w in r.worst:
        c.print(
            f"  {w['image']}: max |diff| {w['max_abs_diff']:.4g}, training picks {run.classes[w['training']]}, device picks {run.classes[w['device']]}"
        )
