"""Are edgetune's latency numbers true? Time the same OpenVINO IR with edgetune's
harness (`edgetune.runtime.timing` over the OpenVINO session) and with OpenVINO's
own `benchmark_app`: same threads, batch 1, latency hint, synchronous calls. The
harness's p50 must be within 10% of benchmark_app's median.

    python benchmarks/benchmark_app_check.py --bundle runs/elpv/bundle-intel --threads 2
    python benchmarks/benchmark_app_check.py --ir model.xml            # or --onnx model.onnx

The two are run alternately (`--rounds`) so that drift of a shared machine hits both.
Writes benchmarks/results/benchmark_app_check.{json,md}.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetune.runtime.devicebench import device_info  # noqa: E402
from edgetune.runtime.files import write_json, write_text  # noqa: E402
from edgetune.runtime.preprocess import PreprocessSpec  # noqa: E402
from edgetune.runtime.timing import Policy, time_call  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def open_ir(args, tmp: Path):
    """(IR path, session) for the chosen input."""
    from edgetune.runtime.backends import open_session

    if args.bundle:
        from edgetune.runtime.bundle import load_bundle

        bundle = load_bundle(args.bundle)
        if bundle.runtime != "openvino":
            sys.exit(f"{args.bundle}: an {bundle.runtime} bundle; give an OpenVINO (intel) bundle, --ir or --onnx.")
        return bundle.artifact_path(args.precision), bundle.open(threads=args.threads, precision=args.precision)
    path = Path(args.ir or args.onnx)
    if args.onnx:
        import openvino as ov

        path = tmp / "model.xml"
        ov.save_model(ov.convert_model(str(args.onnx)), str(path))
    import openvino as ov

    shape = ov.Core().read_model(str(path)).inputs[0].get_partial_shape()
    h, w = (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static else (args.size, args.size)
    spec = PreprocessSpec(size=(h, w), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return path, open_session(
        "openvino", path, spec, {"precision": "?", "input": {"shape": [None, 3, h, w]}}, threads=args.threads
    )


def input_shape(session) -> list[int]:
    """The batch-1 shape of the IR's own input (what benchmark_app feeds)."""
    port = (session.built_in_compiled() if session.built_in else session.compiled).inputs[0]
    dims = []
    ps = port.get_partial_shape()
    nhwc = ps.rank.get_length() == 4 and ps[3].is_static and ps[3].get_length() == 3
    h, w = session.spec.size
    for i, d in enumerate(ps):
        if d.is_static:
            dims.append(d.get_length())
        else:
            dims.append(1 if i == 0 else (h if i == (1 if nhwc else 2) else w))
    return dims


def harness_p50(session, shape: list[int], seconds: float) -> float:
    """p50 of what `edgetune bench` times (`session.run`) on the IR benchmark_app
    runs. An IR with built-in preprocessing takes uint8 frames: its compiled model
    is called through the session's own call, since `run` would use the float-input twin."""
    if session.built_in:
        frame = np.full(shape, 128, np.uint8)
        fn = lambda: session.infer(session.built_in_compiled(), frame)  # noqa: E731
    else:
        x = np.zeros(shape, np.float32)
        fn = lambda: session.run(x)  # noqa: E731
    return time_call(fn, Policy(warmup=20, min_time_s=seconds, min_runs=100)).stats()["p50_ms"]


def benchmark_app_median(
    ir: Path, shape: list[int], threads: int, precision_hint: str, seconds: float, tmp: Path
) -> tuple[float, str]:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    # benchmark_app refuses -nthreads together with -hint; the thread count goes in as a device property,
    # with the session's inference precision (left unset, a bf16-capable CPU runs f32 IRs in bf16).
    config = tmp / "cpu_config.json"
    write_json(config, {"CPU": {"INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": precision_hint}})
    cmd = [
        exe,
        "-m",
        str(ir),
        "-d",
        "CPU",
        "-hint",
        "latency",
        "-api",
        "sync",
        "-b",
        "1",
        "-load_config",
        str(config),
        "-t",
        str(int(max(1, seconds))),
        "-data_shape",
        "[" + ",".join(map(str, shape)) + "]",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = re.search(r"Median:\s+([0-9.]+)\s*(ms|us)", out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"benchmark_app failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    used = re.search(r"INFERENCE_NUM_THREADS:\s*(\d+)", out.stdout)
    if used and int(used.group(1)) != threads:
        sys.exit(f"benchmark_app ran with {used.group(1)} threads, not {threads}")
    return float(m.group(1)) / (1000 if m.group(2) == "us" else 1), " ".join(cmd)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="an OpenVINO (intel) bundle")
    src.add_argument("--ir", help="an OpenVINO IR .xml")
    src.add_argument("--onnx", help="an ONNX file (converted to IR first)")
    p.add_argument("--precision", help="which artifact of the bundle")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=224, help="input size for an IR with dynamic height/width")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ir, session = open_ir(args, Path(tmp))
        shape = input_shape(session)
        ours, theirs, cmd = [], [], ""
        for _ in range(args.rounds):
            ours.append(harness_p50(session, shape, args.seconds))
            median, cmd = benchmark_app_median(
                ir, shape, args.threads, session.config["INFERENCE_PRECISION_HINT"], args.seconds, Path(tmp)
            )
            theirs.append(median)
    h, b = float(np.median(ours)), float(np.median(theirs))
    # Each round's pair ran back to back, so the ratio within a round cancels the
    # shared machine's drift (seconds-long swings of 20% here); take their median.
    ratio = float(np.median(np.array(ours) / np.array(theirs)))
    ok = abs(ratio - 1) <= args.tolerance
    result = {
        "ir": str(ir),
        "input_shape": shape,
        "threads": args.threads,
        "batch": 1,
        "hint": "latency",
        "api": "sync",
        "harness_p50_ms": h,
        "benchmark_app_median_ms": b,
        "ratio": ratio,
        "tolerance": args.tolerance,
        "passed": ok,
        "rounds": {"harness_p50_ms": ours, "benchmark_app_median_ms": theirs},
        "benchmark_app_command": cmd,
        "machine": device_info()["machine"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "benchmark_app_check.json", result)
    write_text(
        args.out / "benchmark_app_check.md",
        "\n".join(
            [
                "### edgetune harness against OpenVINO benchmark_app",
                "",
                f"Same IR (`{Path(ir).name}`, input {shape}), {args.threads} threads, batch 1, latency hint, sync "
                f"API; {args.rounds} alternating rounds of {args.seconds:g} s; {result['machine']}.",
                "",
                "| | p50 / median ms |",
                "|---|---|",
                f"| edgetune harness (p50) | {h:.3f} |",
                f"| benchmark_app (median) | {b:.3f} |",
                f"| ratio (median of the rounds' ratios) | {ratio:.3f} ({'within' if ok else 'OUTSIDE'} "
                f"±{args.tolerance:.0%}) |",
                "",
                "Rounds (harness p50 / benchmark_app median, ms): "
                + ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(ours, theirs))
                + ".",
            ]
        ),
    )
    print(
        f"harness p50 {h:.3f} ms, benchmark_app median {b:.3f} ms, ratio {ratio:.3f}: {'PASS' if ok else 'FAIL'} "
        f"(±{args.tolerance:.0%})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
