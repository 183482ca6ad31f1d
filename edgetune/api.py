"""edgetune from Python, with the command line's defaults: each function takes
the command's options as keyword arguments (Python names: img_size=64) and/or
as command-line strings (["--img-size", "64"]), and returns what it wrote.

    from edgetune import api
    run = api.finetune(data="images/", model="resnet18", epochs=3, out="runs/ft")
    qat = api.quantize(run, out="runs/qat")
    bundles = api.build(["cpu"], out="runs/build", config={"finetune": {"epochs": 3}})
"""

from __future__ import annotations

from pathlib import Path

import click


def _root(config: dict | None) -> click.Context:
    """The `edgetune` group's context, with `config` applied as a YAML file would be."""
    from edgetune.cli.config import build_default_map
    from edgetune.cli.main import cli

    ctx = click.Context(cli, info_name="edgetune", obj={"config_file": None, "config": config or {}})
    if config:
        ctx.default_map = build_default_map(config, cli, ctx, Path("<config given to edgetune.api>"))
    return ctx


def resolve(command: str, args: list | tuple = (), config: dict | None = None, **options):
    """(values, record) a command would run with: its defaults, then the config,
    then `options` (checked and converted by each option's type), then the
    command-line strings `args`."""
    from edgetune.cli.options import record

    root = _root(config)
    cmd = root.command.get_command(root, command)
    names = {p.name for p in cmd.params}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{command}() got an unknown option {unknown[0]!r}; see `edgetune {command} --help`.")
    root.default_map = {**(root.default_map or {}), command: {**(root.default_map or {}).get(command, {}), **options}}
    ctx = cmd.make_context(command, [str(a) for a in args], parent=root)
    return ctx.params, record(ctx)


def finetune(args: list | tuple = (), config: dict | None = None, **options) -> Path:
    """`edgetune finetune`: returns the run directory (of the --task's model)."""
    from edgetune.stages.finetune import run_finetune

    return run_finetune(*resolve("finetune", args, config, **options))


def prune(run_dir=None, args: list | tuple = (), config: dict | None = None, **options) -> Path:
    """`edgetune prune RUN_DIR`: returns the pruned run's directory."""
    from edgetune.stages.prune import run_prune

    return run_prune(*resolve("prune", _with_run(run_dir, args), config, **options))


def quantize(run_dir=None, args: list | tuple = (), config: dict | None = None, **options) -> Path:
    """`edgetune quantize RUN_DIR`: returns the quantized run's directory."""
    from edgetune.stages.quantize import run_quantize

    values, rec = resolve("quantize", _with_run(run_dir, args), config, **options)
    values["ignore"] = list(values.get("ignore") or [])
    return run_quantize(values, rec)


def export(run_dir=None, args: list | tuple = (), config: dict | None = None, **options) -> dict:
    """`edgetune export RUN_DIR --out FILE.onnx`: returns what was exported and its checks."""
    from edgetune.export.onnx import export_onnx

    v, _ = resolve("export", _with_run(run_dir, args), config, **options)
    return export_onnx(
        v["run_dir"],
        v["out"],
        precision=v["precision"],
        opset=v["opset"],
        check=v["check"],
        activations=v["activations"],
    )


def build(
    targets: list[str],
    out,
    config: dict | None = None,
    force: bool = False,
    max_drop: float | None = None,
    start=None,
    precision: str | None = None,
) -> dict[str, Path]:
    """`edgetune build`: returns target -> bundle directory. `precision` forces the
    bundles' main artifact (default: the profile's, unless INT8 is measured slower)."""
    from edgetune.build import BuildRequest
    from edgetune.build import build as run_build
    from edgetune.cli.config import stage_options

    root = _root(config)
    options = {stage: stage_options(root, stage) for stage in ("finetune", "prune", "quantize", "export")}
    return run_build(
        BuildRequest(
            list(targets),
            Path(out),
            options,
            config or {},
            force=force,
            max_drop=max_drop,
            start=Path(start) if start else None,
            precision=precision,
        )
    )


def _with_run(run_dir, args) -> list:
    return [str(run_dir), *args] if run_dir is not None else list(args)
