"""Writing a bundle: the compiled artifacts with their metrics, the manifest
(the contract between build and device: runtime/bundle.py loads and verifies it),
the device README, a .tar.gz beside it. Written in a staging directory and
renamed into place, so a bundle on disk is always whole."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import time
from pathlib import Path

from edgetune import __version__, log
from edgetune.run import Run
from edgetune.runtime.backends import RUNTIMES
from edgetune.runtime.files import sha256_json, write_text
from edgetune.stages.base import Result

logger = log.get(__name__)
VERSIONED = (
    "torch",
    "torchvision",
    "timm",
    "nncf",
    "torch-pruning",
    "onnx",
    *(r.distribution for r in RUNTIMES.values()),
    "numpy",
    "opencv-python-headless",
)


def write_bundle(
    dest: Path,
    staging: Path,
    target,
    inp,
    arts: dict[str, dict],
    exports: dict[str, Result],
    runs: dict[str, Run],
    key: str,
    choice: dict | None = None,
) -> Path:
    """Finish the bundle compiled into `staging` and move it to `dest` (+ .tar.gz).
    `runs`: role (finetune, prune, quantize) -> the run; `choice`: which artifact is
    the main one and why (`stages.main_precision`; default: the profile's)."""
    from edgetune.runtime.bundle import FORMAT, load_bundle, manifest_schema, pack, write_manifest
    from edgetune.stages.device_readme import device_readme

    profile, final = target.profile, final_run(runs)
    main = (choice or {}).get("precision") or profile.precision
    macs, params = float_macs(runs, tuple(inp.spec.size))
    manifest = {
        "format": FORMAT,
        "schema": manifest_schema(inp.spec, final.task),
        "edgetune": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "name": dest.name,
        "target": profile.name,
        "profile": profile.to_dict(),
        "runtime": profile.runtime,
        "precision": main,
        "model": {
            "backbone": final.model_name,
            "stage": final.stage,
            "pruned": "prune" in runs,
            "macs": macs,
            "params": params,
        },
        "classes": final.classes,
        "input": {
            "name": inp.input_name,
            "shape": inp.input_shape,
            "layout": "NCHW",
            "dtype": "float32",
            "frames": "uint8 HxWx3 BGR, any size (OpenCV's order); run_frames applies the preprocessing",
        },
        "preprocess": inp.spec.to_dict(),
        "artifacts": arts,
        "metrics": {**arts[main]["metrics"], "pytorch_test": final.test_metrics()},
        "stages": history(
            runs,
            exports,
            {"target": profile.name, "profile": profile.source, "evaluated_with": target.eval_runtime()},
            key,
        ),
        "calibration": calibration(runs.get("quantize")) or export_calibration(exports),
        "versions": library_versions(),
        "source_run": str(final.dir.resolve()),
        **({"precision_choice": choice} if choice else {}),
    }
    task = final.task_impl
    manifest.update(task.manifest(final))  # the task and its section
    outputs = task.outputs_doc(inp.spec)
    if outputs:
        manifest["input"]["outputs"] = outputs
    target.extra_files(staging, manifest)
    write_text(staging / "README.md", device_readme(manifest, target))
    for f in staging.rglob("*"):  # temp files are private (0600); a bundle is for reading by anyone on the device
        if f.is_file():
            f.chmod(0o755 if os.access(f, os.X_OK) else 0o644)
    write_manifest(staging, manifest)
    load_bundle(staging)  # what the device will check, checked here first
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    pack(dest, dest.parent / f"{dest.name}.tar.gz")
    return dest


def final_run(runs: dict[str, Run]) -> Run:
    """The run the bundle's artifacts come from: the last training stage's."""
    return runs.get("quantize") or runs.get("prune") or runs["finetune"]


def float_macs(runs: dict[str, Run], size: tuple[int, int]) -> tuple[int | None, int | None]:
    """MACs/params of the float architecture the bundle runs (pruned when pruned)."""
    from edgetune.models.stats import count_macs

    run = runs.get("prune") or runs["finetune"]
    try:
        return count_macs(run.build_model(), size)
    except Exception as e:  # noqa: BLE001 - a statistic must not fail the build
        logger.warning("Could not count MACs (%s).", str(e).splitlines()[0])
        return None, None


def history(runs: dict[str, Run], exports: dict[str, Result], compile_config: dict, key: str) -> list[dict]:
    """Every stage's record, from fine-tuning to this compile, once each."""
    records: list[dict] = []
    seen = set()
    for role in ("finetune", "prune", "quantize"):
        if role in runs:
            for rec in runs[role].info.get("history", []):
                ident = (rec.get("stage"), rec.get("inputs_hash"), rec.get("finished"))
                if ident not in seen:
                    seen.add(ident)
                    records.append(rec)
    records.append(
        {
            "stage": "export",
            "config": {p: {"activations": (r.output.get("info") or {}).get("activations")} for p, r in exports.items()},
            "inputs_hash": sha256_json({p: r.key for p, r in exports.items()}),
            "metrics": {p: {"sha256": r.output["sha256"], **(r.output.get("info") or {})} for p, r in exports.items()},
        }
    )
    records.append({"stage": "compile", "config": compile_config, "inputs_hash": key, "metrics": {}})
    return records


def export_calibration(exports: dict[str, Result]) -> dict:
    """A task that quantizes in its export stage (post-training): the images it calibrated on."""
    for r in exports.values():
        quant = (r.output.get("info") or {}).get("quantization") or {}
        if quant.get("calibration"):
            return dict(quant["calibration"])
    return {}


def calibration(run: Run | None) -> dict:
    """The quantize stage's record of its calibration images (hash, recipe, the list)."""
    if run is None:
        return {}
    return dict(run.info.get("calibration") or (run.info.get("quant") or {}).get("calibration") or {})


def library_versions(names=VERSIONED) -> dict:
    out = {"python": platform.python_version(), "edgetune": __version__}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
