"""Where an artifact's time goes, per op type: the runtime's own profiler on a
bundle's fp32 and INT8 artifacts at batch 1 (ONNX Runtime's session profiling for
cpu bundles, OpenVINO's performance counters for intel bundles, with the precision
each op ran in). It shows why an INT8 artifact is not faster where it is not: the
float ops left between its integer kernels, and the quantize/dequantize steps
around them. An intel bundle's IR is profiled as edgetune's session runs it: cut
after its built-in preprocessing (the session resizes with OpenCV before the call).

    python benchmarks/op_profile.py BUNDLE [BUNDLE ...] [--runs 100] [--results NAME]

Default: the families benchmark's builds whose INT8 gains least (benchmarks/work/
families; run families.py first). Writes benchmarks/results/NAME.{json,md}
(op_profile by default).
Profiling adds its own overhead: compare shares within a column, not with bench's p50.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import RESULTS, machine, today
from families import WORK

DEFAULT = [
    WORK / "mobilenetv3_large_100" / "bundle-cpu",
    WORK / "convnext_atto" / "bundle-cpu",
    WORK / "vit_tiny_patch16_224" / "bundle-intel",
]
TOP = 10


def ort_profile(path: Path, threads: int, runs: int) -> dict[str, float]:
    """ms per run by op type (ONNX Runtime's kernel times)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape])
        for _ in range(runs):
            session.run(None, {inp.name: x.astype(np.float32)})
        events = json.loads(Path(session.end_profiling()).read_text())
    by = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(by)


def ov_profile(path: Path, threads: int, runs: int) -> dict[str, float]:
    """ms per run by op type and the precision it ran in (OpenVINO's counters)."""
    import openvino as ov

    from edgetune.runtime.ov import PLAIN_INPUT_NODE, plain_model

    core = ov.Core()
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    model = core.read_model(str(path))
    cut = [op for op in model.get_ordered_ops() if op.get_friendly_name() == PLAIN_INPUT_NODE]
    if cut:  # as edgetune's session runs it: without the IR's own preprocessing (OpenCV's comes first)
        model = plain_model(model, [1 if d.is_dynamic else d.get_length() for d in cut[0].get_output_partial_shape(0)])
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    port = compiled.inputs[0]
    shape = [1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
    rng = np.random.default_rng(0)
    u8 = port.get_element_type() == ov.Type.u8  # an IR with its preprocessing built in takes the uint8 frame
    x = rng.integers(0, 256, shape).astype(np.uint8) if u8 else rng.standard_normal(shape).astype(np.float32)
    by = defaultdict(float)
    for i in range(runs + 10):
        request.infer({0: x})
        if i >= 10:  # the first calls allocate
            for p in request.profiling_info:
                if p.status == p.Status.EXECUTED:
                    precision = p.exec_type.rsplit("_", 1)[-1].lower()
                    by[f"{p.node_type} ({precision})"] += p.real_time.total_seconds() * 1e3 / runs
    return dict(by)


def profile(bundle: Path, threads: int, runs: int) -> dict:
    from edgetune.runtime.bundle import load_bundle

    b = load_bundle(bundle)
    out = {"bundle": str(bundle), "model": b.manifest["model"]["backbone"], "runtime": b.runtime, "artifacts": {}}
    for precision in ("fp32", "int8"):
        path = b.artifact_path(precision)
        ops = (ort_profile if b.runtime == "onnxruntime" else ov_profile)(path, threads, runs)
        out["artifacts"][precision] = {"total_ms": sum(ops.values()), "ops_ms": ops}
    return out


def markdown(profiles: list[dict], threads: int, runs: int, command: str) -> str:
    lines = [
        "# Time per op type, fp32 against INT8",
        "",
        f"Machine: {machine()}, {today()}. Batch 1, {threads} threads, {runs} profiled runs each; ms per run from "
        "the runtime's own profiler (ONNX Runtime's kernel times; OpenVINO's counters, with the precision each op "
        f"ran in). The profiler adds overhead: compare shares within a column. `{command}`.",
    ]
    for p in profiles:
        lines += ["", f"## {p['model']} on {p['runtime']}", ""]
        cols = []
        for precision in ("fp32", "int8"):
            a = p["artifacts"][precision]
            top = sorted(a["ops_ms"].items(), key=lambda kv: -kv[1])[:TOP]
            cols.append([f"**total {a['total_ms']:.2f}**", *(f"{name} {ms:.2f}" for name, ms in top)])
        lines += ["| fp32 | INT8 |", "|---|---|"]
        for i in range(max(map(len, cols))):
            cells = [c[i] if i < len(c) else "" for c in cols]
            lines.append(f"| {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="*", type=Path, default=DEFAULT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--results", default="op_profile", help="results/NAME.json and .md")
    args = p.parse_args()
    from edgetune.runtime.files import write_json, write_text

    profiles = [profile(b, args.threads, args.runs) for b in args.bundles]
    out, command = RESULTS / args.results, " ".join(["python benchmarks/op_profile.py", *sys.argv[1:]])
    write_json(out.with_suffix(".json"), {"profiles": profiles, "threads": args.threads, "runs": args.runs})
    write_text(out.with_suffix(".md"), markdown(profiles, args.threads, args.runs, command))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
