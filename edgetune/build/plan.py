"""Which stages a build runs, in order: fine-tune -> prune (when the config has a
prune section) -> quantize (when a target wants INT8) -> one export per ONNX
variant the targets need -> one compile per target. `build()` runs the list.

One QAT model serves every target of a build: when a target's runtime needs
signed INT8 activations (TensorRT), the quantize stage makes them all signed."""

from __future__ import annotations

from edgetune.build.cache import data_fingerprint
from edgetune.errors import EdgetuneError
from edgetune.stages.base import Stage, StageOptions
from edgetune.targets.profile import HOST_RUNTIMES

TRAINING = ("finetune", "prune", "quantize")


def quantize_overrides(profiles: list, config: dict) -> dict:
    """The quantize stage's activations: signed int8 when any target's runtime
    needs it (TensorRT has no uint8 Q/DQ), so one QAT model serves every target of
    the build; otherwise the quantize section's own value (default auto)."""
    signed = [p.name for p in profiles if p.activations == "int8" and "int8" in p.precisions]
    if not signed:
        return {}
    asked = (config.get("quantize") or {}).get("activations")
    if asked is not None and asked != "int8":
        raise EdgetuneError(
            f"Config key 'quantize.activations' is {asked!r}, but target {', '.join(signed)} needs signed int8 activations "
            "(TensorRT has no uint8 quantization). Set quantize.activations: int8 (or remove the key), or build "
            f"{', '.join(signed)} in a separate build."
        )
    return {"activations": "int8"}


def prune_overrides(profiles: list, config: dict) -> dict:
    """Pruning keeps channel counts a multiple of the targets' preferred one, and
    `target-latency` times candidates on the first target's runtime and precision,
    unless the prune section sets these itself."""
    section = {k.replace("-", "_"): v for k, v in (config.get("prune") or {}).items()}
    out = {} if "round_to" in section else {"round_to": max(p.channel_multiple for p in profiles)}
    if "target_latency" in section:
        first = profiles[0]
        if "latency_runtime" not in section and first.runtime not in HOST_RUNTIMES:
            raise EdgetuneError(
                f"Config key 'prune.target-latency' times pruned candidates on the first target's runtime, and {first.name}'s "
                f"is {first.runtime}, which runs on the device, not on this machine. Set prune.latency-runtime "
                f"({' or '.join(HOST_RUNTIMES)}) to time on this machine's CPU instead, or prune by target-macs."
            )
        out.update(
            {
                k: v
                for k, v in (
                    ("latency_runtime", first.runtime),
                    ("latency_precision", "int8" if first.precision == "int8" else "fp32"),
                )
                if k not in section
            }
        )
    return out


def check_config(config: dict) -> None:
    if "activations" in (config.get("export") or {}):
        raise EdgetuneError(
            "Config key 'export.activations' does not apply to build: each target takes the INT8 export its runtime runs "
            "best (uint8 activations for ONNX Runtime, as quantized for OpenVINO and TensorRT). Remove the key."
        )


def plan(
    options: dict[str, StageOptions],
    config: dict,
    profiles: list,
    plugins: dict,
    given: tuple[str, ...] = (),
    task: str = "classification",
) -> list[Stage]:
    """The build's stages in order. `options`: each stage's resolved options;
    `config`: what the user's config file set (by section); `given`: training
    roles an existing run stands in for (`build --from`); `task`: which stages
    make the model (the one place a build chooses by task)."""
    if task == "anomaly":
        return anomaly_plan(options, config, profiles, plugins, given)
    from edgetune.stages.common import TrainingStage
    from edgetune.stages.export import ExportStage
    from edgetune.stages.finetune import run_finetune
    from edgetune.stages.prune import run_prune
    from edgetune.stages.quantize import run_quantize

    check_config(config)
    quant_in = quantize_overrides(profiles, config)  # before any training: a conflict fails now
    stages: list[Stage] = []
    runs = [r for r in TRAINING if r in given]
    if not runs:
        ft = options["finetune"]
        stages.append(TrainingStage("finetune", run_finetune, ft, source_key=data_fingerprint(str(ft.values["data"]))))
        runs.append("finetune")
    if "prune" in config and runs == ["finetune"]:
        stages.append(
            TrainingStage(
                "prune",
                run_prune,
                options["prune"].with_values(**prune_overrides(profiles, config)),
                inputs=(runs[-1],),
            )
        )
        runs.append("prune")
    if "quantize" not in runs and any(
        "int8" in p.precisions for p in profiles
    ):  # profiles asking for float only skip QAT
        stages.append(
            TrainingStage("quantize", run_quantize, options["quantize"].with_values(**quant_in), inputs=(runs[-1],))
        )
        runs.append("quantize")
    final = runs[-1]
    deploy = export_and_compile(
        profiles,
        plugins,
        lambda precision, activations: ExportStage(precision, activations, options["export"], final),
        {r: r for r in runs},
        int8="quantize" in runs,
    )
    return [*stages, *deploy]


def export_and_compile(profiles: list, plugins: dict, export, runs: dict, int8: bool = True) -> list[Stage]:
    """One export stage per ONNX variant, shared by the targets that need it, then
    one compile stage per target. `export(precision, activations)` makes an export
    stage; without `int8` (no quantized model) every target gets fp32."""
    from edgetune.stages.compile import CompileStage

    exports: dict[str, Stage] = {}
    compiles = []
    for p in profiles:
        target = plugins[p.name]
        chosen = {}
        for precision in sorted({"int8" if q == "int8" else "fp32" for q in p.precisions}) if int8 else ["fp32"]:
            stage = export(precision, target.onnx_activations() if precision == "int8" else "keep")
            chosen[precision] = exports.setdefault(stage.name, stage).name
        compiles.append(CompileStage(p, target, chosen, runs))
    return [*exports.values(), *compiles]


def anomaly_plan(
    options: dict[str, StageOptions], config: dict, profiles: list, plugins: dict, given: tuple[str, ...] = ()
) -> list[Stage]:
    """--task anomaly: fit PatchCore (the finetune stage) -> one export per ONNX
    variant, INT8 by post-training quantization of the feature extractor there
    (the quantize section's calibration recipe and count; no QAT, no pruning) ->
    one compile per target."""
    from edgetune import log
    from edgetune.stages.anomaly import AnomalyExportStage, run_fit
    from edgetune.stages.common import TrainingStage

    check_config(config)
    ignored = [k for k in ("prune",) if k in config] + [
        f"quantize.{k}" for k in (config.get("quantize") or {}) if k not in ("calibration", "calib-count")
    ]
    if ignored:
        log.get(__name__).warning(
            "Config key(s) %s do not apply to --task anomaly (PatchCore is fitted, not trained; INT8 comes from post-training "
            "quantization in the export stage, calibrated with quantize.calibration and quantize.calib-count).",
            ", ".join(ignored),
        )
    stages: list[Stage] = []
    if "finetune" not in given:
        ft = options["finetune"]
        fit = TrainingStage("finetune", run_fit, ft, source_key=data_fingerprint(str(ft.values["data"])))
        fit.distributed = False  # fitting is one pass over the normal images: rank 0 alone under torchrun
        stages.append(fit)
    q = options["quantize"].values
    export_options = options["export"].with_values(
        calibration=q.get("calibration") or "default", calib_count=q.get("calib_count")
    )
    quantized: dict = {}  # one PTQ serves the build's INT8 variants
    deploy = export_and_compile(
        profiles,
        plugins,
        lambda precision, activations: AnomalyExportStage(
            precision, activations, export_options, "finetune", quantized
        ),
        {"finetune": "finetune"},
    )
    return [*stages, *deploy]
