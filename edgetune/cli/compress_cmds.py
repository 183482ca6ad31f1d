"""`prune`, `quantize`, `export`. Thin: options here, work in edgetune.compress / export."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli.options import distill_options, out_option, pass_options, record, run_argument, train_options
from edgetune.runtime.backends import HOST_RUNTIMES


@click.command()
@run_argument
@click.option(
    "--ratio",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of channels to remove from every prunable layer, e.g. 0.3.",
)
@click.option(
    "--target-macs",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of MACs to remove instead, e.g. 0.5 (the channel ratio is searched).",
)
@click.option(
    "--target-latency",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of latency to remove instead, e.g. 0.3: each stage's channels pruned where the measured latency falls "
    "most per loss added.",
)
@click.option(
    "--latency-runtime",
    type=click.Choice(HOST_RUNTIMES),
    default="onnxruntime",
    show_default=True,
    help="With --target-latency: the runtime candidates are timed on (a build uses its first target's).",
)
@click.option(
    "--latency-precision",
    type=click.Choice(["int8", "fp32"]),
    default="int8",
    show_default=True,
    help="With --target-latency: time candidates exported in this precision (a build: its first target's).",
)
@click.option(
    "--latency-threads",
    type=click.IntRange(1),
    help="With --target-latency: runtime threads for timing (default: the runtime's own choice).",
)
@click.option(
    "--round-to",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Keep channel counts multiples of this (the target profile's channel multiple).",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Prune in this many steps, each followed by --epochs of recovery fine-tuning.",
)
@click.option(
    "--importance",
    type=click.Choice(["l1", "l2", "fpgm", "lamp", "random"]),
    default="l1",
    show_default=True,
    help="Channel importance: magnitude (l1, l2), FPGM, LAMP or random.",
)
@train_options(epochs=3, lr=5e-4, warmup=0.0, inherit_augment=True)
@distill_options
@out_option(help="Run directory to write (the pruned model, its layer shapes and metrics).")
@pass_options
def prune(ctx: click.Context, opts: dict):
    """Remove channels structurally (torch-pruning DepGraph), with recovery fine-tuning."""
    from edgetune.stages.prune import run_prune

    run_prune(opts, record(ctx))


@click.command()
@run_argument
@click.option(
    "--mode",
    type=click.Choice(["qat", "ptq"]),
    default="qat",
    show_default=True,
    help="qat: calibrate, then quantization-aware training; ptq: calibrate only.",
)
@click.option(
    "--calibration",
    default="default",
    show_default=True,
    help="Calibration recipe: a name under calibration/ or a YAML file.",
)
@click.option(
    "--calib-count", type=click.IntRange(1), help="Number of calibration images (overrides the recipe's count)."
)
@click.option(
    "--ignore",
    multiple=True,
    help="Keep layers matching this regular expression in float (repeatable), e.g. 'classifier'.",
)
@click.option(
    "--fold-bn/--no-fold-bn",
    default=True,
    show_default=True,
    help="Fold BatchNorm into the convolutions before quantizing (runtimes fuse Conv + Q/DQ).",
)
@click.option(
    "--overflow-fix",
    type=click.Choice(["enable", "first_layer", "disable"]),
    default="enable",
    show_default=True,
    help="Keep weights in 7 bits of int8 (all layers, first layer, none): x86 CPUs without VNNI saturate full-range "
    "int8 products.",
)
@click.option(
    "--activations",
    type=click.Choice(["auto", "int8"]),
    default="auto",
    show_default=True,
    help="auto: uint8 (zero-point 0) after ReLU-like layers, int8 elsewhere (best for ONNX Runtime and OpenVINO); "
    "int8: every activation signed int8, as TensorRT (Jetson) requires.",
)
# lr 1e-4: on ELPV, efficientnet_lite0, 2 epochs of QAT at 1e-5 ended 2.6 points
# below float (84.1%), at 1e-4 0.9 above (87.7%); see benchmarks/results/compress_elpv_224.md.
@train_options(epochs=3, lr=1e-4, warmup=0.0, weight_decay=0.0, inherit_augment=True)
@distill_options
@out_option(help="Run directory to write (the quantized model, its NNCF config and calibration record).")
@pass_options
def quantize(ctx: click.Context, opts: dict):
    """Quantize to INT8 with NNCF: symmetric, per-channel weights, zero-point 0."""
    from edgetune.stages.quantize import run_quantize

    opts["ignore"] = list(opts.get("ignore") or [])
    run_quantize(opts, record(ctx))


@click.command()
@run_argument
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="int8", show_default=True)
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option(
    "--activations",
    type=click.Choice(["keep", "uint8"]),
    default="keep",
    show_default=True,
    help="INT8 activations: keep (as quantized, zero-point 0 everywhere) or uint8 (int8 ones shifted to zero-point "
    "128: the same values, which ONNX Runtime on x86 CPUs fuses into integer kernels throughout).",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Run the post-export checks (checker, Q/DQ form, ONNX Runtime vs PyTorch).",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write what was exported and the check results here.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="ONNX file to write (FILE.onnx)."
)
def export(run_dir: Path, precision: str, opset: int, activations: str, check: bool, json_file: Path | None, out: Path):
    """Export a run to ONNX (fp32, or INT8 with standard Q/DQ) and check it."""
    from edgetune import log
    from edgetune.export.onnx import export_onnx
    from edgetune.runtime.files import write_json

    result = export_onnx(run_dir, out, precision=precision, opset=opset, check=check, activations=activations)
    if json_file:
        write_json(json_file, result)
    c = result["checks"]
    msg = (
        f"Wrote {result['path']} ({precision}, opset {opset}, {result['size_mb']:.2f} MB, input "
        f"'{result['input_name']}' {result['input_shape']} NCHW)."
    )
    if c.get("summary"):  # the task's comparison with PyTorch, in words
        msg += f" Checks passed: {c['summary']}."
    log.console.print(msg)
