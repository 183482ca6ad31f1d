"""Selective quantization by measured latency, tried by hand: does keeping one
stage of an INT8 graph in float make ONNX Runtime faster where INT8 gains least?
Each candidate is the cpu build's INT8 file with one stage's quantizers removed
(its weights dequantized to float constants, the Q/DQ pairs inside the stage
dropped; those at its borders kept), timed against the whole INT8 file and the
fp32 file in alternating rounds in one process (batch 1, 2 threads).

    python benchmarks/selective_int8.py [--model NAME ...]

Reads the families benchmark's exports (benchmarks/work/families/MODEL/export; run
families.py first). Writes benchmarks/results/selective_int8.{json,md}.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
from common import RESULTS, machine, today, write_table
from families import SIZE, WORK

STAGE = re.compile(r"/(blocks|stages)/\1\.(\d+)/")  # timm's stage modules, as torch.onnx names the nodes


def stage_of(node) -> int | None:
    m = STAGE.match(node.name)
    return int(m.group(2)) if m else None


def float_stage(proto, stage: int):
    """A copy of `proto` with `stage` in float: its layers' int8 weights as float
    constants, and the activation Q/DQ pairs whose readers all lie in the stage gone."""
    import onnx
    from onnx import numpy_helper

    from edgetune.export.checks import GraphIndex
    from edgetune.export.graph import dequantized

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g, index = m.graph, GraphIndex(m)
    drop = []
    for node in [n for n in g.node if stage_of(n) == stage]:
        w = index.producer.get(node.input[1]) if node.op_type in ("Conv", "MatMul", "Gemm") else None
        weight = dequantized(index, w) if w is not None and w.op_type == "DequantizeLinear" else None
        if weight is not None:
            g.initializer.append(numpy_helper.from_array(weight, node.input[1] + "_float"))
            node.input[1] += "_float"
        if node.op_type == "QuantizeLinear" and index.value(node.input[0]) is None:
            dqs = [c for c, _ in index.consumers.get(node.output[0], [])]
            readers = [(r, j) for d in dqs for r, j in index.consumers.get(d.output[0], [])]
            if all(d.op_type == "DequantizeLinear" for d in dqs) and all(stage_of(r) == stage for r, _ in readers):
                for r, j in readers:
                    r.input[j] = node.input[0]
                drop += [node, *dqs]
    for node in drop:
        g.node.remove(node)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    return m


def measure(model: str, threads: int, rounds: int) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from edgetune.runtime.timing import Policy, time_alternating

    export = WORK / model / "export"
    int8 = onnx.load(str(export / "model.int8-uint8.onnx"))
    stages = sorted({s for s in map(stage_of, int8.graph.node) if s is not None})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3

    def session(m):
        return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    sessions = {"fp32": session(onnx.load(str(export / "model.fp32.onnx"))), "int8": session(int8)}
    sessions.update({f"stage {s} float": session(float_stage(int8, s)) for s in stages})
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    calls = {k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
    timed = time_alternating(calls, Policy(warmup=1, min_time_s=0.5, min_runs=20), rounds=rounds)
    p50 = {k: t.stats()["p50_ms"] for k, t in timed.items()}
    return [
        {"model": model, "variant": k, "p50_ms": v, "vs_int8": p50["int8"] / v, "vs_fp32": p50["fp32"] / v}
        for k, v in p50.items()
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="default: mobilenetv3_large_100 and convnext_atto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args()
    from edgetune.runtime.files import write_json

    models = args.model or ["mobilenetv3_large_100", "convnext_atto"]
    rows = [row for m in models for row in measure(m, args.threads, args.rounds)]
    write_json(RESULTS / "selective_int8.json", {"rows": rows, "machine": machine(), "date": today()})
    write_table(
        rows,
        ["model", "variant", "p50_ms", "vs_int8", "vs_fp32"],
        RESULTS / "selective_int8.md",
        "One stage kept float in the cpu build's INT8 graph (ONNX Runtime)",
        intro=f"Machine: {machine()}, {today()}. Batch 1, {args.threads} threads, {SIZE} px, every variant of a model "
        f"timed in {args.rounds} alternating rounds in one process. vs_int8 / vs_fp32: that p50 over this row's "
        "(above 1: this row is faster). `python benchmarks/selective_int8.py`.",
    )
    print((RESULTS / "selective_int8.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
