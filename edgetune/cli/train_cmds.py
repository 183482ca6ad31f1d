"""`finetune` and `evaluate`. Thin: options here, work in edgetune.stages.finetune
and the run's task (edgetune.report)."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli.options import (
    data_options,
    model_options,
    out_option,
    pass_options,
    record,
    run_argument,
    task_options,
    train_options,
)


@click.command()
@data_options
@model_options
@task_options
@train_options(epochs=10, lr=1e-3)
@out_option(help="Run directory to write (model, split, preprocessing, metrics).")
@pass_options
def finetune(ctx: click.Context, opts: dict):
    """Fit a model for --task on the --data images: a pretrained timm backbone
    fine-tuned (or, where the task fits without training, e.g. an anomaly detector,
    fitted on the images of good parts alone)."""
    from edgetune.stages.finetune import run_finetune

    run_finetune(opts, record(ctx))


@click.command()
@run_argument
@click.option(
    "--split",
    "part",
    type=click.Choice(["train", "val", "test"]),
    default="test",
    show_default=True,
    help="Which part of the run's split.",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the metrics here (default: RUN_DIR/eval_SPLIT.json).",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option(
    "--tta",
    type=click.Choice(["none", "hflip", "flips"]),
    default="none",
    show_default=True,
    help="Test-time augmentation: average the class probabilities over flipped views (hflip: 2 views, "
    "flips: horizontal, vertical and both, 4 views). Costs one forward pass per view; the deployed "
    "artifacts stay single-view.",
)
@click.option(
    "--data",
    help="Where the run's data source is on this machine, if not where its own --data points from here "
    "(split.json keeps paths relative to the source).",
)
def evaluate(run_dir: Path, part: str, json_file: Path | None, batch_size: int, tta: str, data: str | None):
    """Evaluate a run on its own split: metrics, confusion matrix, mistakes gallery."""
    from edgetune.report import evaluate_run

    evaluate_run(run_dir, part, json_file, batch_size, tta, data)
