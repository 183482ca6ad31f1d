"""`bench`, `compare` and `verify`. Thin: options here, work in edgetune.bench,
edgetune.compare and edgetune.verify."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli.options import gate_defaults, pass_options
from edgetune.errors import EdgetuneError

FILE = click.Path(dir_okay=False, path_type=Path)
# `--data` here is the labelled images to measure on. Its config key is `eval-data`,
# so a top-level `data:` (the training source) never silently adds training images.
eval_data_option = click.option(
    "--data",
    "eval_data",
    help="Labelled images: a folder of class sub-folders, a path,label CSV or 'elpv' (all their images). Default: the "
    "test split of the run the artifact came from.",
)
skip_bad_option = click.option("--skip-bad", is_flag=True, help="Leave unreadable images out instead of stopping.")
threads_option = click.option(
    "--threads", type=click.IntRange(1), help="Inference threads (default: the runtime's own choice)."
)


def _batches(ctx, param, value) -> list[int]:
    try:
        out = sorted({int(v) for v in str(value).split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of batch sizes, e.g. 1,8") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: batch sizes must be positive integers, e.g. 1,8")
    return out


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@eval_data_option
@threads_option
@click.option(
    "--batch",
    "batches",
    default="1,8",
    show_default=True,
    callback=_batches,
    help="Batch sizes for throughput (latency is always batch 1).",
)
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True, help="Untimed calls before measuring.")
@click.option(
    "--min-time",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Measure at least this many seconds ...",
)
@click.option(
    "--min-runs", type=click.IntRange(1), default=50, show_default=True, help="... and at least this many calls."
)
@click.option(
    "--precision",
    help="Which artifact of each bundle: int8, fp16, bf16, fp32, or 'all' (default: the bundle's main one).",
)
@click.option(
    "--runtime", help="Run bundles with this runtime instead of their own, e.g. onnxruntime for a Jetson bundle's ONNX."
)
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Add the float PyTorch model the bundles came from as a baseline row.",
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="ssh://USER@HOST[:PORT]",
    help="Benchmark the bundles on this device over SSH (repeat for several; they run concurrently).",
)
@click.option(
    "--identity",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SSH private key for --device (default: your keys and agent).",
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("~/.ssh/known_hosts"),
    show_default=True,
    help="Host keys the device must match.",
)
@click.option(
    "--accept-host-key",
    is_flag=True,
    help="Accept a device's UNKNOWN host key and record it in --known-hosts (like OpenSSH's "
    "accept-new). A changed key stays refused.",
)
@click.option(
    "--host-key-fingerprint",
    metavar="SHA256:...",
    help="Accept the device's host key, unknown or changed, only if it has this fingerprint (checked on the device: "
    "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), and record it in --known-hosts.",
)
@click.option(
    "--remote-python",
    default="python3",
    show_default=True,
    help="Python on the device (with numpy, OpenCV and the bundle's runtime).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(1),
    default=15.0,
    show_default=True,
    help="Seconds to connect and authenticate.",
)
@click.option(
    "--remote-timeout",
    type=click.FloatRange(1),
    default=1800.0,
    show_default=True,
    help="Seconds without output from the device before giving up.",
)
@click.option("--json", "json_file", type=FILE, help="Write the rows as JSON.")
@click.option("--markdown", "md_file", type=FILE, help="Write the table as Markdown.")
@click.option("--plot", "png_file", type=FILE, help="Write a PNG of accuracy against p50 latency.")
@skip_bad_option
@pass_options
def bench(ctx: click.Context, o: dict):
    """Latency, throughput, memory, size and accuracy of bundles and runs, side by side.

    Each BUNDLE_OR_RUN (a bundle directory or .tar.gz, or a run directory for its
    PyTorch model) is measured in a fresh process by the same harness: warm-up, then
    timed calls until --min-time and --min-runs are both reached."""
    from edgetune.bench.devices import SSHOptions
    from edgetune.bench.runner import RunnerOptions
    from edgetune.bench.suite import run_bench
    from edgetune.runtime.timing import Policy

    opts = RunnerOptions(
        o["threads"], o["batches"], Policy(o["warmup"], o["min_time"], o["min_runs"]), runtime=o["runtime"]
    )
    ssh = SSHOptions(
        identity=o["identity"],
        known_hosts=o["known_hosts"].expanduser(),
        accept_host_key=o["accept_host_key"],
        host_key_fingerprint=o["host_key_fingerprint"],
        remote_python=o["remote_python"],
        connect_timeout=o["connect_timeout"],
        idle_timeout=o["remote_timeout"],
    )
    run_bench(
        list(o["artifacts"]),
        data=o["eval_data"],
        opts=opts,
        precision=o["precision"],
        baseline=o["baseline"],
        devices=list(o["devices"]),
        ssh=ssh,
        json_file=o["json_file"],
        md_file=o["md_file"],
        png_file=o["png_file"],
        skip_bad=o["skip_bad"],
        command=ctx.command_path,
    )


@click.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@eval_data_option
@click.option(
    "--max-drop",
    type=click.FloatRange(0),
    default=None,
    help=f"Largest drop allowed, in points of the REFERENCE's task metric ({gate_defaults()}).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=0.99,
    show_default=True,
    help="Smallest top-1 agreement allowed (fraction).",
)
@threads_option
@click.option(
    "--precision", help="Which artifact of the CANDIDATE bundle: int8, fp16, bf16, fp32 (default: its main one)."
)
@click.option("--junit", type=FILE, help="Write JUnit XML: one test case per gate.")
@click.option("--markdown", "md_file", type=FILE, help="Write a Markdown summary (e.g. >> $GITHUB_STEP_SUMMARY).")
@click.option("--json", "json_file", type=FILE, help="Write the comparison as JSON.")
@skip_bad_option
@click.pass_context
def compare(
    ctx: click.Context,
    reference: Path,
    candidate: Path,
    eval_data,
    max_drop,
    min_agreement,
    threads,
    precision,
    junit,
    md_file,
    json_file,
    skip_bad,
):
    """CI gate: CANDIDATE (e.g. the INT8 bundle) against REFERENCE (e.g. the float run).

    Both are evaluated on the same labelled images. Exit status 1 when the accuracy
    drops by more than --max-drop points or the top-1 agreement is below
    --min-agreement; 0 when both gates pass; 2 for a usage error."""
    from edgetune.compare import run_compare

    result = run_compare(
        reference,
        candidate,
        eval_data,
        max_drop,
        min_agreement,
        threads,
        junit,
        md_file,
        json_file,
        skip_bad,
        precision=precision,
    )
    if not result.passed:
        failed = "; ".join(c.message for c in result.checks if not c.passed)
        raise EdgetuneError(f"The accuracy gate failed: {failed}.", exit_code=1)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--images",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A folder of images (searched recursively; labels are not needed).",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The run the bundle was built from (default: the manifest's source_run).",
)
@click.option("--precision", help="Which artifact of the bundle (default: its main one).")
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=0.99,
    show_default=True,
    help="Smallest top-1 agreement allowed.",
)
@click.option(
    "--max-diff",
    type=click.FloatRange(0),
    help="Largest logit difference allowed, relative to the largest logit (default: 0.001 fp32, 0.02 fp16, 0.25 int8).",
)
@click.option("--json", "json_file", type=FILE, help="Write the result as JSON.")
@click.pass_context
def verify(ctx: click.Context, bundle: Path, images: Path, run_dir, precision, min_agreement, max_diff, json_file):
    """Parity: the bundle's device path (OpenCV + runtime) against the training path
    (PIL decoding, the run's preprocessing, its PyTorch model) on the same image files.

    Exit status 1 when they disagree: usually a preprocessing mismatch (RGB/BGR,
    size, interpolation, mean/std), not quantization."""
    from edgetune.verify import verify_bundle

    result = verify_bundle(bundle, images, run_dir, min_agreement, max_diff, precision, json_file)
    if not result.passed:
        diff = (
            f", largest {result.output} difference {result.max_rel_diff:.2%} of the largest {result.output} "
            f"(limit {result.max_diff:.2%})"
            if result.diff_checked
            else ""
        )
        raise EdgetuneError(
            f"Parity check failed: the {result.decides} agrees on {result.agreement:.2%} of the images (minimum "
            f"{result.min_agreement:.2%}){diff}. Check the preprocessing first; the float artifact (--precision fp32) "
            "must match to rounding.",
            exit_code=1,
        )
