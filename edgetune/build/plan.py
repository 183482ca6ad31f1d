"""Which stages a build runs, in order: fine-tune -> prune (when the config has a
prune section) -> quantize (when a target wants INT8) -> one export per ONNX
variant the targets need -> one compile per target. `build()` runs the list.

One QAT model serves every target of a build: when a target's runtime needs
signed INT8 activations (TensorRT), the quantize stage makes them all signed."""

from __future__ import annotations

from edgetune.build.cache import data_fingerprint
from edgetune.errors import EdgetuneError
from edgetune.runtime.backends import HOST_RUNTIMES
from edgetune.stages.base import Stage, StageOptions

TRAINING = ("finetune", "prune", "quantize")


def quantize_overrides(profiles: list, config: dict) -> dict:
    """The quantize stage's activations: signed int8 when any target's runtime
    needs it (TensorRT has no uint8 Q/DQ), so one QAT model serves every target of
    the build; otherwise the quantize section's own value (default auto)."""
    signed = signed_targets(profiles)
    if not signed:
        return {}
    asked = (config.get("quantize") or {}).get("activations")
    if asked is not None and asked != "int8":
        raise EdgetuneError(
            f"Config key 'quantize.activations' is {asked!r}, but target {', '.join(signed)} needs signed int8 "
            "activations (TensorRT has no uint8 quantization). Set quantize.activations: int8 (or remove the key), "
            f"or build {', '.join(signed)} in a separate build."
        )
    return {"activations": "int8"}


def signed_targets(profiles: list) -> list[str]:
    """The targets whose runtime takes only signed INT8 activations."""
    return [p.name for p in profiles if p.activations == "int8" and "int8" in p.precisions]


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
                "Config key 'prune.target-latency' times pruned candidates on the first target's runtime, and "
                f"{first.name}'s is {first.runtime}, which runs on the device, not on this machine. Set "
                f"prune.latency-runtime ({' or '.join(HOST_RUNTIMES)}) to time on this machine's CPU instead, or "
                "prune by target-macs."
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
            "Config key 'export.activations' does not apply to build: each target takes the INT8 export its runtime "
            "runs best (uint8 activations for ONNX Runtime, as quantized for OpenVINO and TensorRT). Remove the key."
        )


def plan(
    options: dict[str, StageOptions],
    config: dict,
    profiles: list,
    plugins: dict,
    given: tuple[str, ...] = (),
    task=None,
    precision: str | None = None,
) -> list[Stage]:
    """The build's stages in order. `options`: each stage's resolved options;
    `config`: what the user's config file set (by section); `given`: training
    roles an existing run stands in for (`build --from`); `task`: the build's task
    (`edgetune.tasks.base.Task`): whether its model trains (then prune and QAT
    apply), how it fits and exports; `precision`: the bundles' main artifact, forced."""
    from edgetune import log
    from edgetune.stages.common import TrainingStage
    from edgetune.stages.export import ExportStage
    from edgetune.stages.finetune import run_finetune
    from edgetune.stages.prune import run_prune
    from edgetune.stages.quantize import run_quantize

    check_config(config)
    warning = task.config_warning(config)
    if warning:
        log.get(__name__).warning(warning)
    if task.trains:
        quant_in = quantize_overrides(profiles, config)  # before any training: a conflict fails now
    else:  # the export's post-training quantization: signed only where a target needs it
        quant_in = {"activations": "int8" if signed_targets(profiles) else "auto"}
    stages: list[Stage] = []
    runs = [r for r in TRAINING if r in given]
    if not runs:
        ft = options["finetune"]
        fit = TrainingStage("finetune", run_finetune, ft, source_key=data_fingerprint(str(ft.values["data"])))
        fit.distributed = task.distributed  # a task fitted by one process: rank 0 alone under torchrun
        stages.append(fit)
        runs.append("finetune")
    if task.trains and "prune" in config and runs == ["finetune"]:
        prune = options["prune"].with_values(**prune_overrides(profiles, config))
        stages.append(TrainingStage("prune", run_prune, prune, inputs=(runs[-1],)))
        runs.append("prune")
    int8 = any("int8" in p.precisions for p in profiles)  # profiles asking for float only skip QAT
    if task.trains and "quantize" not in runs and int8:
        stages.append(
            TrainingStage("quantize", run_quantize, options["quantize"].with_values(**quant_in), inputs=(runs[-1],))
        )
        runs.append("quantize")
    final, shared = runs[-1], {}
    taken = {**options, "quantize": options["quantize"].with_values(**quant_in)}
    export_options = options["export"].with_values(**task.export_options(taken))
    deploy = export_and_compile(
        profiles,
        plugins,
        lambda precision, activations: ExportStage(precision, activations, export_options, final, shared),
        {r: r for r in runs},
        int8="quantize" in runs or (int8 and not task.trains),  # a task that does not train quantizes in its export
        main=precision,
    )
    return [*stages, *deploy]


def export_and_compile(
    profiles: list, plugins: dict, export, runs: dict, int8: bool = True, main: str | None = None
) -> list[Stage]:
    """One export stage per ONNX variant, shared by the targets that need it, then
    one compile stage per target. `export(precision, activations)` makes an export
    stage; without `int8` (no quantized model) every target gets fp32. `main`: the
    bundles' main precision where the build forces one."""
    from edgetune.stages.compile import CompileStage

    exports: dict[str, Stage] = {}
    compiles = []
    for p in profiles:
        target = plugins[p.name]
        chosen = {}
        for precision in sorted({"int8" if q == "int8" else "fp32" for q in p.precisions}) if int8 else ["fp32"]:
            stage = export(precision, target.onnx_activations() if precision == "int8" else "keep")
            chosen[precision] = exports.setdefault(stage.name, stage).name
        compiles.append(CompileStage(p, target, chosen, runs, main))
    return [*exports.values(), *compiles]
