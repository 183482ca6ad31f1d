"""The cpu artifact of a build that also targets Jetson. TensorRT takes only signed
int8 activations, so such a build quantizes every activation signed, and its cpu
target compiles the uint8 form of that model for ONNX Runtime. This measures that
form against the cpu-only build's (NNCF's own choice: unsigned after each ReLU6)
and the fp32 file: how many Convs ONNX Runtime runs as integer kernels, p50, top-1
accuracy on the ELPV test images and agreement with fp32.

efficientnet_lite0 at 224 px (offline ImageNet weights), its head fitted for one
epoch on ELPV (the backbone frozen: the model only has to be a real one), then NNCF
post-training quantization twice, `--activations auto` (what a cpu-only build
uses) and `--activations int8` (what a build with a jetson target uses), each
exported as the cpu target exports it (`--activations uint8`). Batch 1, 2 threads,
the three files timed in alternating rounds in one process.

    python benchmarks/mixed_targets.py

Writes benchmarks/results/mixed_targets.{json,md}; its runs in benchmarks/work/mixed_targets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import RESULTS, machine, today, write_table

WORK = Path(__file__).resolve().parent / "work" / "mixed_targets"
MODEL, SIZE = "efficientnet_lite0", 224
VARIANTS = {"int8, cpu-only build": "auto", "int8, cpu + jetson build": "int8"}


def artifacts(work: Path) -> dict[str, Path]:
    """variant -> ONNX file; the runs are reused when already there."""
    from edgetune import api

    run = work / "float"
    if not (run / "run.json").exists():
        api.finetune(data="elpv", model=MODEL, img_size=SIZE, epochs=1, freeze="full", out=str(run), seed=0)
    files = {"fp32": work / "fp32.onnx"}
    if not files["fp32"].exists():
        api.export(run, precision="fp32", out=str(files["fp32"]))
    for name, activations in VARIANTS.items():
        q, files[name] = work / f"ptq-{activations}", work / f"int8-{activations}.onnx"
        if not (q / "run.json").exists():
            api.quantize(run, mode="ptq", activations=activations, out=str(q))
        if not files[name].exists():
            api.export(q, precision="int8", activations="uint8", out=str(files[name]))
    return files


def integer_convs(path: Path, tmp: Path) -> tuple[int, int]:
    """(Convs ONNX Runtime runs as QLinearConv, all Convs) in its optimised graph."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(tmp / f"{path.stem}.opt.onnx"), 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    return ops.count("QLinearConv"), sum(ops.count(op) for op in ("QLinearConv", "Conv", "FusedConv"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--work", type=Path, default=WORK)
    args = p.parse_args()
    import onnxruntime as ort

    from edgetune.data.dataset import eval_loader
    from edgetune.data.transforms import EvalTransform
    from edgetune.run import load_run
    from edgetune.runtime.files import write_json
    from edgetune.runtime.timing import Policy, time_alternating

    files = artifacts(args.work)
    run = load_run(args.work / "float")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
    sessions = {k: ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"]) for k, f in files.items()}
    batches = list(eval_loader(run.split.parts["test"], EvalTransform(run.spec), 32))
    y = np.concatenate([t.numpy() for _, t in batches])
    logits = {
        k: np.concatenate([s.run(None, {"input": x.numpy()})[0] for x, _ in batches]) for k, s in sessions.items()
    }
    x1 = batches[0][0][:1].numpy()
    calls = {k: (lambda s=s: s.run(None, {"input": x1})) for k, s in sessions.items()}
    timed = time_alternating(calls, Policy(warmup=5, min_time_s=20.0, min_runs=200), rounds=args.rounds)
    p50 = {k: t.stats()["p50_ms"] for k, t in timed.items()}
    rows = []
    for k, f in files.items():
        fused, convs = integer_convs(f, args.work)
        rows.append(
            {
                "artifact": k,
                "integer_convs": f"{fused}/{convs}",
                "latency_ms_p50": p50[k],
                "speedup_vs_fp32": p50["fp32"] / p50[k],
                "accuracy": float((logits[k].argmax(1) == y).mean()),
                "agreement_fp32": float((logits[k].argmax(1) == logits["fp32"].argmax(1)).mean()),
            }
        )
    write_json(RESULTS / "mixed_targets.json", {"rows": rows, "machine": machine(), "date": today(), "images": len(y)})
    write_table(
        rows,
        list(rows[0]),
        RESULTS / "mixed_targets.md",
        "The cpu artifact of a build with a jetson target (ONNX Runtime)",
        intro=f"Machine: {machine()}, {today()}. {MODEL} at {SIZE} px, its head fitted for one epoch on ELPV, NNCF "
        f"post-training quantization; batch 1, {args.threads} threads, the three files in {args.rounds} alternating "
        f"rounds in one process; accuracy and agreement with fp32's top-1 on the {len(y)} ELPV test images. "
        "integer_convs: Convs ONNX Runtime runs as QLinearConv, of all. `python benchmarks/mixed_targets.py`.",
    )
    print((RESULTS / "mixed_targets.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
