"""`build`, `inspect` and `engine build`. Thin: the work is in edgetune.build,
edgetune.stages and edgetune.runtime. `inspect` and `engine` never import torch."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli.options import gate_defaults, pass_options, task_override_names, task_overrides


@click.command()
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    metavar="NAME|FILE",
    help="Device profile: cpu, intel, jetson, jetson-orin-nano, jetson-agx-orin, jetson-xavier-nx, or a YAML file of "
    "your own. Repeat to build several from one trained model.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/build"),
    show_default=True,
    help="Build directory: one sub-directory per stage, then bundle-TARGET/ and bundle-TARGET.tar.gz.",
)
@click.option("--force", is_flag=True, help="Rerun every stage, even those whose inputs and config are unchanged.")
@click.option(
    "--from",
    "start",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Start from this run instead of fine-tuning: a float, pruned or quantized run (edgetune "
    "finetune/prune/quantize --out). Only the stages after it run.",
)
@click.option("--data", default=None, help="Override the images to train on (finetune's --data).")
@click.option("--model", default=None, help="Override the backbone (finetune's --model).")
@click.option(
    "--img-size", type=click.IntRange(16, 1024), default=None, help="Override the input size (finetune's --img-size)."
)
@click.option(
    "--precision",
    type=click.Choice(["int8", "fp16", "bf16", "fp32"]),
    default=None,
    help="The main artifact of every bundle. Default: the profile's (INT8), unless INT8 is measured slower than fp32 "
    "on this machine's runtime; then fp32, and the summary and manifest say so.",
)
@click.option(
    "--pretrained/--no-pretrained",
    default=None,
    help="Override finetune's --pretrained: start from ImageNet weights (offline packages for efficientnet_lite0/1/2).",
)
@task_overrides
@click.option(
    "--max-drop",
    type=click.FloatRange(0),
    default=None,
    help="Gate each bundle as `edgetune compare` does: fail (exit 1) when its test score in the task's gate metric is "
    f"more than this many points below the float model's ({gate_defaults()}).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=0.99,
    show_default=True,
    help="With --max-drop: also fail when the bundle and the float model pick the same class on fewer test images "
    "than this.",
)
@pass_options
def build(ctx: click.Context, opts: dict):
    """Build device bundles: fine-tune, prune, QAT, export, compile, evaluate.

    Fine-tune -> prune (when the config has a prune section) -> QAT -> export ->
    compile for each --target -> evaluate the compiled artifact -> bundle.

    Each stage takes its options from its own section of --config (finetune:,
    prune:, quantize:, export:). A stage whose inputs and config are unchanged is
    skipped; an interrupted build resumes where it stopped. With --max-drop (or
    build: {max-drop: ...} in the config) every bundle is gated against the float
    model on the test split after it is written. With --from RUN_DIR the build
    starts from a run you trained with finetune, prune or quantize."""
    from edgetune.build import BuildRequest
    from edgetune.build import build as run_build
    from edgetune.cli.config import stage_options

    keys = ("data", "model", "img_size", "pretrained", *task_override_names())
    overrides = {k: opts[k] for k in keys if opts[k] is not None}
    options = {
        stage: stage_options(ctx, stage, **(overrides if stage == "finetune" else {}))
        for stage in ("finetune", "prune", "quantize", "export")
    }
    config = (ctx.find_root().obj or {}).get("config") or {}
    run_build(
        BuildRequest(
            list(opts["targets"]),
            opts["out"],
            options,
            config,
            force=opts["force"],
            max_drop=opts["max_drop"],
            min_agreement=opts["min_agreement"],
            start=opts["start"],
            overrides=overrides,
            precision=opts["precision"],
        )
    )


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead.")
@click.option(
    "--no-verify", is_flag=True, help="Do not check the files' sha256 (quick look at a bundle known to be damaged)."
)
def inspect(bundle: Path, as_json: bool, no_verify: bool):
    """Show a bundle's manifest (model, classes, preprocessing, artifacts with their
    accuracy and latency, stages, versions), after checking every file's sha256."""
    from edgetune import log
    from edgetune.runtime.bundle import load_bundle

    b = load_bundle(bundle, verify=not no_verify)
    if as_json:
        import json

        click.echo(json.dumps(b.manifest, indent=2))
        return
    from rich.console import Console

    from edgetune.runtime.manifest import describe

    describe(b, Console(width=max(log.console.width, 120)))


@click.group()
def engine():
    """TensorRT engines, built on the Jetson itself."""


@engine.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["int8", "fp16"]),
    help="Which engines (default: all the bundle has).",
)
@click.option(
    "--dla-core",
    default="profile",
    show_default=True,
    help="DLA core number, 'none' for the GPU only, or 'profile' for the profile's setting.",
)
@click.option(
    "--workspace-mb", type=click.IntRange(1), default=None, help="Builder workspace limit (default: the profile's)."
)
@click.option("--force", is_flag=True, help="Rebuild engines that already exist for this device.")
def engine_build(bundle: Path, precisions: tuple[str, ...], dla_core: str, workspace_mb: int | None, force: bool):
    """Build the bundle's TensorRT engines here (INT8 from the Q/DQ ONNX with FP16
    fallback), with a timing cache kept in the bundle."""
    from edgetune import log
    from edgetune.errors import EdgetuneError
    from edgetune.runtime import backends
    from edgetune.runtime.bundle import load_bundle

    b = load_bundle(bundle)
    if b.runtime != "tensorrt":
        raise EdgetuneError(
            f"{bundle} is a {b.target} bundle for {b.runtime}; TensorRT engines are built from a Jetson bundle "
            "(--target jetson...)."
        )
    backends.require("tensorrt")
    if dla_core not in ("profile", "none") and not dla_core.isdigit():
        raise EdgetuneError(f"--dla-core {dla_core}: give a DLA core number (0, 1), 'none' or 'profile'.")
    core = dla_core if dla_core == "profile" else (None if dla_core == "none" else int(dla_core))
    from edgetune.runtime.trt_build import build_engines

    record = build_engines(b, list(precisions) or None, core, workspace_mb, force)
    log.console.print(
        f"Engines for {record['gpu']} (TensorRT {record['tensorrt']}, CUDA {record['cuda']}): "
        + ", ".join(f"{p}: {e['file']}" for p, e in record["engines"].items())
    )
