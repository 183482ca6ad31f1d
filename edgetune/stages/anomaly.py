"""The anomaly task's build stages: `run_fit` (the `finetune --task anomaly`
driver: fit PatchCore on the train split's --normal images, set the threshold on
validation, write the run) and `AnomalyExportStage` (one ONNX variant of the
fitted model; INT8 by post-training quantization of its feature extractor,
calibrated on normal images, one PTQ shared by every INT8 variant of a build)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.models.backbone import resolve_preprocess
from edgetune.models.patchcore import build_patchcore, feature_indices
from edgetune.run import prepare_out, stage_record, write_run
from edgetune.runtime.anomaly import TASK
from edgetune.runtime.files import sha256_file, sha256_json
from edgetune.stages.base import Result, Stage, StageOptions
from edgetune.stages.export import export_name
from edgetune.stages.finetune import split_for
from edgetune.train.anomaly import DEFAULTS, MIN_NORMAL, binary_split, calibrate, evaluate_split, fit_bank, normal_index
from edgetune.train.loop import save_atomic

logger = log.get(__name__)


def run_fit(opts: dict, config_record: dict) -> Path:
    """`finetune --task anomaly`: fit, threshold, evaluate, write the run; returns its dir."""
    started = time.time()
    opts = {**DEFAULTS, **{k: v for k, v in opts.items() if v is not None}}
    out = prepare_out(Path(opts["out"]), opts.get("resume", False), opts.get("force", False))
    indices = feature_indices(opts["model"])  # a ViT is refused before any data is read
    split = split_for(opts, out)
    normal = normal_index(split.classes, opts.get("normal"), opts["data"])
    source_classes, normal_class = split.classes, split.classes[normal]
    split = binary_split(split, normal)
    train = [p for p, y in split.parts["train"] if y == 0]
    if len(train) < MIN_NORMAL:
        raise EdgetuneError(
            f"--normal {normal_class}: the train split holds only {len(train)} image(s) of that class; PatchCore needs at "
            f"least {MIN_NORMAL} normal images to fit on (hundreds are better). Add images of good parts."
        )
    torch.manual_seed(opts["seed"])
    import timm

    spec = resolve_preprocess(timm.create_model(opts["model"], pretrained=False), opts.get("img_size"))
    model = build_patchcore(opts["model"], tuple(spec.size), opts["pretrained"], opts.get("weights"), indices=indices)
    logger.info(
        "Fitting PatchCore on %d '%s' images of the train split: %s at %dx%d, coreset %g.",
        len(train),
        normal_class,
        opts["model"],
        *spec.size,
        opts["coreset"],
    )
    bank = fit_bank(
        model,
        train,
        spec,
        float(opts["coreset"]),
        float(opts["max_bank_mb"]),
        int(opts["seed"]),
        int(opts["batch_size"]),
    )
    norm, val_info = calibrate(
        model, split, spec, normal_class, float(opts["max_false_alarm"]), int(opts["batch_size"])
    )
    test = evaluate_split(model, split, spec, norm, "test", int(opts["batch_size"]))
    save_atomic(model.state_dict(), out / "model.pt")
    metrics = {
        "test": test,
        "bank": bank,
        "threshold": norm.to_dict(),
        **val_info,
        "fit_seconds": round(time.time() - started, 1),
    }
    record = stage_record("fit", config_record, sha256_json(split.to_dict()), metrics, started)
    anomaly = {**norm.to_dict(), "source_classes": source_classes, "feature_indices": indices, "bank": bank}
    write_run(
        out,
        stage="float",
        model=opts["model"],
        classes=split.classes,
        spec=spec,
        split=split,
        history=[record],
        config=config_record,
        task=TASK,
        anomaly=anomaly,
        weights="offline/hub ImageNet" if opts["pretrained"] and not opts.get("weights") else opts.get("weights"),
    )
    auroc = test.get("auroc")
    logger.info(
        "PatchCore on %s: bank %d x %d (%.1f MB); test AUROC %s, F1 %.3f, false alarms %s at threshold %.4g (raw; %s). Run: %s",
        opts["model"],
        bank["rows"],
        bank["dim"],
        bank["size_mb"],
        f"{auroc:.4f}" if auroc is not None else "-",
        test["f1"],
        f"{100 * test['false_alarm_rate']:.1f}%" if test["false_alarm_rate"] is not None else "-",
        norm.threshold_raw,
        norm.rule,
        out,
    )
    return out


class AnomalyExportStage(Stage):
    """One ONNX variant (fp32, int8, int8-uint8) of a fitted anomaly run. The
    build's INT8 variants share `quantized` (the module NNCF calibrated once)."""

    def __init__(self, precision: str, activations: str, options: StageOptions, run: str, quantized: dict):
        self.precision = precision
        self.activations = activations if precision == "int8" else "keep"
        self.tag = export_name(precision, self.activations)
        self.name, self.inputs = f"export-{self.tag}", (run,)
        self.options = options.with_values(precision=precision, activations=self.activations, task=TASK)
        self.quantized = quantized

    def config(self) -> dict:
        return self.options.hashed()

    def run(self, inputs: list[Result], out: Path, resume: bool) -> dict:
        from edgetune.export.anomaly import export_variant

        opts = self.options.values
        info = export_variant(
            out / inputs[0].output["run_dir"],
            out / "export",
            self.precision,
            self.activations,
            opts.get("opset") or 17,
            opts.get("calibration") or "default",
            opts.get("calib_count"),
            cache=self.quantized,
        )
        path = Path(info["path"])
        return {"file": f"export/{path.name}", "sha256": sha256_file(path), "info": info}
