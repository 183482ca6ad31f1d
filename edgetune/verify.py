"""Parity of the training path and the device path on the same image files.

training side: PIL decoding + `EvalTransform` (the run's preprocessing, by the
               same function the device runs) + the run's PyTorch model
device side:   OpenCV decoding + the bundle's manifest preprocessing + its runtime

Both must decide alike (the same class; the same anomalous flag; ...) and give
close outputs, as the bundle's task compares them (`Task.parity`). A mismatch here
is a preprocessing bug (RGB/BGR, size, interpolation, mean/std), which people most
often take for quantization loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError

# Largest output difference allowed, relative to the largest |output| of the training
# side: float artifacts must match to rounding; quantized ones within quantization error.
MAX_DIFF = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.25}


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
    spearman: float | None = None  # where the task reports it: rank correlation of the scores
    diff_checked: bool = (
        True  # False: the task leaves the difference unchecked (an INT8 anomaly model without --max-diff)
    )
    decides: str = "top-1 class"  # what the agreement counts (the task's decision)
    output: str = "logit"  # what the difference is of
    decision: str | None = None  # how a worst image's decision reads ("{} boxes"); None: a class index

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
    from edgetune.bench.artifacts import open_artifact, session_results, torch_results
    from edgetune.run import is_run, load_run

    art = open_artifact(bundle_path, "BUNDLE")
    if art.bundle is None:
        raise EdgetuneError(
            f"BUNDLE {bundle_path} is a run directory; verify takes a bundle (edgetune build) and, with --run, the run "
            "it came from."
        )
    bundle = art.bundle
    src = run_dir or bundle.source_run
    if src is None or not is_run(src):
        raise EdgetuneError(
            f"Bundle {bundle_path}: its source run {src} is not on this machine. Pass --run RUN_DIR (the run the "
            "bundle was built from)."
        )
    run = load_run(src)
    if (run.task, list(run.classes)) != (bundle.task, list(bundle.classes)):
        raise EdgetuneError(
            f"Run {run.dir} is a {run.task} model of classes {run.classes} but bundle {bundle_path} a {bundle.task} "
            f"model of classes {bundle.classes}: --run is not the bundle's source run."
        )
    files = list_images(images)  # labels are not needed: both sides are compared with each other
    session = bundle.open(precision=precision)
    prec = session.precision
    limit = MAX_DIFF.get(prec, 0.25) if max_diff is None else max_diff
    train_side = torch_results(run, run.build_model(), files)
    device_side = session_results(session, files, desc=f"{bundle.name} ({session.name})")
    p = run.task_impl.parity(train_side, device_side, prec, max_diff)
    worst = np.argsort(-p["per_image"])[:5]
    spec_diff = {
        k: (v, bundle.spec.to_dict()[k]) for k, v in run.spec.to_dict().items() if bundle.spec.to_dict()[k] != v
    }
    training, device = p["decisions"]
    result = VerifyResult(
        n=len(files),
        agreement=p["agreement"],
        max_abs_diff=p["max_abs_diff"],
        max_rel_diff=p["max_rel_diff"],
        min_agreement=min_agreement,
        max_diff=limit,
        spec_differences=spec_diff,
        worst=[
            {
                "image": files[i],
                "max_abs_diff": float(p["per_image"][i]),
                "training": int(training[i]),
                "device": int(device[i]),
            }
            for i in worst
        ],
        spearman=p.get("spearman"),
        diff_checked=p["diff_checked"],
        decides=p.get("decides", "top-1 class"),
        output=p.get("output", "logit"),
        decision=p.get("decision"),
    )
    _print(result, bundle, run, prec, session.name)
    if json_file:
        from edgetune.runtime.files import write_json

        write_json(json_file, result.to_dict())
    return result


def _print(r: VerifyResult, bundle, run, precision: str, runtime: str) -> None:
    c = log.console
    c.print(f"Parity of {bundle.name} ({runtime}, {precision}) against run {run.dir} (PyTorch) on {r.n} images:")
    c.print(f"  {r.decides} agrees on {r.agreement:.2%}  (minimum {r.min_agreement:.2%})")
    checked = (
        f"{r.max_rel_diff:.2%} of the largest {r.output}; limit {r.max_diff:.2%} for {precision}"
        if r.diff_checked
        else f"{precision}: reported, not checked"
    )
    c.print(f"  largest {r.output} difference {r.max_abs_diff:.4g}  ({checked})")
    if r.spearman is not None:
        c.print(f"  {r.output} rank correlation (Spearman) {r.spearman:.4f}")
    for k, (a, b) in r.spec_differences.items():
        c.print(f"  [yellow]preprocessing differs[/yellow]: {k} is {a} in the run but {b} in the bundle")
    if r.passed:
        c.print("[green]PASS[/green]: the device path reproduces the training path.")
        return
    c.print(
        "[red bold]FAIL[/red bold]: the device path does not reproduce the training path. Look first at the "
        "preprocessing (channel order RGB/BGR, input size, interpolation, mean/std) before blaming quantization. "
        "Largest differences:"
    )

    def decision(value: int) -> str:
        return r.decision.format(value) if r.decision else run.classes[value]

    for w in r.worst:
        c.print(
            f"  {w['image']}: max |diff| {w['max_abs_diff']:.4g}, training: {decision(w['training'])}, device: "
            f"{decision(w['device'])}"
        )
