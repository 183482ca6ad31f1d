"""The `edgetune` Click group. Commands are imported only when run, and command
modules import torch only inside their bodies, so `edgetune --help` and the
device-side commands (`infer`, `inspect`, `bench` on a device) stay light."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from pathlib import Path

import click

from edgetune import __version__, torchrun
from edgetune.errors import EdgetuneError

# name -> "module:attribute"; the module is imported on first use.
COMMANDS = {
    "finetune": "edgetune.cli.train_cmds:finetune",
    "evaluate": "edgetune.cli.train_cmds:evaluate",
    "prune": "edgetune.cli.compress_cmds:prune",
    "quantize": "edgetune.cli.compress_cmds:quantize",
    "export": "edgetune.cli.compress_cmds:export",
    "build": "edgetune.cli.build_cmds:build",
    "inspect": "edgetune.cli.build_cmds:inspect",
    "engine": "edgetune.cli.build_cmds:engine",
    "bench": "edgetune.cli.measure_cmds:bench",
    "compare": "edgetune.cli.measure_cmds:compare",
    "verify": "edgetune.cli.measure_cmds:verify",
    "infer": "edgetune.cli.infer_cmd:infer",
}
# What trains on every process under torchrun; any other command runs on rank 0 alone.
DISTRIBUTED = {"finetune", "prune", "quantize", "build"}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            return None  # a command whose module is not installed stays out of the listing
        self.commands[name] = cmd
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of option values: shared top-level keys plus one section per command.",
)
@click.option("-v", "--verbose", count=True, help="More detail (repeat for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and final results.")
@click.version_option(__version__, prog_name="edgetune")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, verbose: int, quiet: bool):
    """Fine-tune, prune and INT8-quantize a small vision model for a task (see
    finetune --task), then build, benchmark and run it on Jetson (TensorRT), Intel
    (OpenVINO) or CPU (ONNX Runtime) devices."""
    from edgetune import log

    log.setup(verbose=verbose, quiet=quiet)
    if not torchrun.is_main() and ctx.invoked_subcommand not in DISTRIBUTED:
        ctx.exit(0)  # e.g. `torchrun ... edgetune evaluate`: one process does it, not N racing on the same files
    ctx.obj = {"config_file": config_file, "config": {}}
    if config_file is not None:
        from edgetune.cli.config import build_default_map, load_yaml

        cfg = load_yaml(config_file)
        ctx.default_map = build_default_map(cfg, cli, ctx, config_file)
        ctx.obj["config"] = cfg


class Terminated(BaseException):
    """SIGTERM: under torchrun, the agent stopping this process (another rank failed)."""


def _terminate(signum, frame):
    raise Terminated()


# What the build machine's install adds to a device's (`pip install 'edgetune[train]'`).
BUILD_STACK = {
    "torch",
    "torchvision",
    "timm",
    "nncf",
    "torch_pruning",
    "torchao",
    "onnx",
    "sklearn",
    "scipy",
    "matplotlib",
    "PIL",
    "paramiko",
    "elpv_dataset",
}


def _build_stack_missing(module: str, argv) -> str:
    """A command that needs the build machine's install, run on a device's."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args if a in COMMANDS), "this command")
    return (
        f"edgetune {command} needs {module}, which this install does not have: it is a device install (the runtime "
        "alone: inspect, infer, bench of a bundle). Training, compression, export and metrics on labelled data need "
        "the build machine's install: pip install 'edgetune[train]'."
    )


def _distributed_failure(e: BaseException) -> str | None:
    """The message for a torchrun process that lost its group, else None."""
    if not torchrun.launched():
        return None
    where = torchrun.where()
    again = (
        "Epochs already finished are kept: rerun the same torchrun command with --resume to continue from the last "
        "full one."
    )
    if isinstance(e, Terminated):
        return f"{where}: stopped by torchrun (SIGTERM), because another rank failed or the job was cancelled. {again}"
    dist = sys.modules.get("torch.distributed")
    if (
        dist is not None
        and isinstance(e, getattr(dist, "DistError", ()))
        or "gloo" in str(e).lower()
        or "nccl" in str(e).lower()
    ):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (
            f"{where}: lost contact with the other ranks ({type(e).__name__}: {first[:300]}). One of them failed or "
            f"was killed: see its output above. {again}"
        )
    return None


def main(argv=None):
    if torchrun.launched():
        signal.signal(
            signal.SIGTERM, _terminate
        )  # torchrun stops the others when one rank fails: say so, and exit non-zero
    try:
        # Without standalone mode Click returns ctx.exit()'s code instead of exiting.
        code = cli.main(args=argv, prog_name="edgetune", standalone_mode=False)
    except EdgetuneError as e:
        click.echo(click.style("Error: ", fg="red", bold=True) + str(e), err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Interrupted: finished work is saved; rerun with --resume to continue.", err=True)
        sys.exit(130)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in BUILD_STACK:
            raise
        click.echo(click.style("Error: ", fg="red", bold=True) + _build_stack_missing(e.name, argv), err=True)
        sys.exit(2)
    except (Exception, Terminated) as e:
        message = _distributed_failure(e)
        if message is None:
            raise
        click.echo(click.style("Error: ", fg="red", bold=True) + message, err=True)
        sys.exit(143 if isinstance(e, Terminated) else 1)
    logging.shutdown()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
