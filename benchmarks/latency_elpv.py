"""ELPV latency/accuracy table: PyTorch eager FP32, ONNX Runtime FP32/INT8, OpenVINO
FP32/BF16/INT8 and pruned + INT8 on both runtimes, batch 1, 2 threads, one run on the
ELPV test images, every row through `edgetune bench`'s harness: the model call and
end to end from a 640x480 uint8 frame.

Build the artifacts first (each build's bundles carry their int8 and fp32 artifacts),
either from scratch with the example configs, or from compress_elpv.py's QAT runs:

    W=benchmarks/work/compress_elpv
    edgetune build --target cpu --target intel --from $W/qat --out runs/elpv
    edgetune build --target cpu --target intel --from $W/pruned42_qat --out runs/elpv-pruned
    # or: edgetune --config examples/elpv.yaml build ... ; examples/elpv-pruned.yaml
    python benchmarks/latency_elpv.py --float benchmarks/work/finetune_elpv/flips300_ema_last \\
        --bundle runs/elpv/bundle-cpu --bundle runs/elpv/bundle-intel \\
        --pruned-bundle runs/elpv-pruned/bundle-cpu --pruned-bundle runs/elpv-pruned/bundle-intel

Writes benchmarks/results/latency_elpv.{json,md,png}: the rows, each with its ratio
to PyTorch eager, and the goals below checked. With benchmark_app_check's result in
the same folder, its comparison is added to the Markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"

# (description, faster row, slower row, minimum speed ratio)
SPEED_GOALS = [
    ("OpenVINO INT8 vs PyTorch eager FP32", ("openvino", "int8", False), ("pytorch", "fp32", False), 10.0),
    ("pruned OpenVINO INT8 vs PyTorch eager FP32", ("openvino", "int8", True), ("pytorch", "fp32", False), 15.0),
    ("OpenVINO INT8 vs OpenVINO FP32", ("openvino", "int8", False), ("openvino", "fp32", False), 2.0),
    ("OpenVINO BF16 vs OpenVINO FP32", ("openvino", "bf16", False), ("openvino", "fp32", False), 1.0),
    ("ONNX Runtime INT8 vs ONNX Runtime FP32", ("onnxruntime", "int8", False), ("onnxruntime", "fp32", False), 1.5),
]
MAX_INT8_DROP_POINTS = 0.5
MAX_PREPROCESS_MS = 0.5  # end to end (640x480 frame -> logits) over the model call, p50
MIN_FP32_AGREEMENT = 0.999  # an fp32 artifact against PyTorch: the same class on this share of images


def _key(row: dict) -> tuple[str, str, bool]:
    return row["runtime"], row["precision"], "pruned" in (row["stage"] or "")


def goals(rows: list[dict]) -> list[dict]:
    by = {}
    for r in rows:
        by.setdefault(_key(r), r)
    out = []
    for name, fast, slow, need in SPEED_GOALS:
        if fast in by and slow in by:
            ratio = by[slow]["latency_ms_p50"] / by[fast]["latency_ms_p50"]
            out.append({"goal": f"{name} >= {need:g}x", "value": f"{ratio:.2f}x", "passed": ratio >= need})
    base = by.get(("pytorch", "fp32", False))
    for r in rows:
        if r["runtime"] != "pytorch" and r.get("e2e_ms_p50") is not None:
            pre = r["e2e_ms_p50"] - r["latency_ms_p50"]
            out.append(
                {
                    "goal": f"{r['stage']} {r['runtime']} {r['precision']} end to end within {MAX_PREPROCESS_MS} ms "
                    "of the model call",
                    "value": f"{pre:+.2f} ms",
                    "passed": pre <= MAX_PREPROCESS_MS,
                }
            )
        if r["precision"] == "fp32" and r["runtime"] != "pytorch" and r.get("agreement") is not None:
            out.append(
                {
                    "goal": f"{r['stage']} {r['runtime']} fp32 agrees with PyTorch on >= {MIN_FP32_AGREEMENT:.1%}",
                    "value": f"{r['agreement']:.2%} (ran {r.get('inference_precision') or '?'})",
                    "passed": r["agreement"] >= MIN_FP32_AGREEMENT,
                }
            )
    for r in rows:
        if r["precision"] == "int8" and base and r["accuracy"] is not None and base["accuracy"] is not None:
            drop = (base["accuracy"] - r["accuracy"]) * 100
            out.append(
                {
                    "goal": f"{r['stage']} {r['runtime']} int8 within {MAX_INT8_DROP_POINTS} points of (unpruned) "
                    "float",
                    "value": f"{-drop:+.2f} points",
                    "passed": drop <= MAX_INT8_DROP_POINTS,
                }
            )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--float",
        dest="float_run",
        type=Path,
        help="the float fine-tuned run (PyTorch eager row); required unless --report-only",
    )
    p.add_argument(
        "--bundle", type=Path, action="append", default=[], help="an unpruned bundle (all its precisions are measured)"
    )
    p.add_argument(
        "--pruned-bundle", type=Path, action="append", default=[], help="a pruned bundle (its int8 artifact)"
    )
    p.add_argument("--data", help="labelled images (default: the float run's test split)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=5.0)
    p.add_argument("--min-runs", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="latency_elpv")
    p.add_argument(
        "--note",
        default="",
        help="how the artifacts were made and what else loaded the machine: written with the results",
    )
    p.add_argument(
        "--report-only", action="store_true", help="redraw the Markdown and plot from the JSON, measuring nothing"
    )
    args = p.parse_args()
    if args.report_only:
        report(args.out / f"{args.name}.json")
        return 0

    if not args.float_run:
        p.error("--float RUN_DIR is required")
    from edgetune import log
    from edgetune.bench.runner import RunnerOptions
    from edgetune.bench.suite import run_bench
    from edgetune.runtime.files import write_json
    from edgetune.runtime.timing import Policy

    log.setup()
    opts = RunnerOptions(args.threads, [1], Policy(20, args.min_time, args.min_runs))
    kw = dict(data=args.data, opts=opts, baseline=False, devices=[], command=" ".join(sys.argv))
    rows = run_bench([args.float_run, *args.bundle], precision="all", **kw)
    if args.pruned_bundle:  # the float run stays first so every ratio has its baseline
        pruned = run_bench([args.float_run, *args.pruned_bundle], precision="int8", **kw)
        rows += [r for r in pruned if r["runtime"] != "pytorch"]
    from edgetune.bench.report import complete_rows

    complete_rows(rows)
    write_json(
        args.out / f"{args.name}.json",
        {
            "rows": rows,
            "goals": goals(rows),
            "threads": args.threads,
            "policy": opts.policy.to_dict(),
            "note": args.note,
        },
    )
    for g in report(args.out / f"{args.name}.json"):
        print(f"{'PASS' if g['passed'] else 'FAIL'} {g['goal']}: {g['value']}")
    return 0


def report(results: Path) -> list[dict]:
    """The Markdown table and plot next to `results` (the JSON); rerun alone, it
    redraws them from the JSON without measuring again."""
    from edgetune.bench.report import markdown as rows_markdown
    from edgetune.bench.report import plot
    from edgetune.runtime.files import read_json, write_text

    data = read_json(results)
    rows, checked = data["rows"], goals(data["rows"])
    title = f"ELPV test images, batch 1, {data['threads']} threads"
    plot(rows, results.with_suffix(".png"), title)
    md = [
        rows_markdown(rows, title),
        *([data["note"], ""] if data.get("note") else []),
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    md += [f"| {g['goal']} | {g['value']} | {'yes' if g['passed'] else '**no**'} |" for g in checked]
    check = results.parent / "benchmark_app_check.json"
    if check.exists():
        c = read_json(check)
        md += [
            "",
            f"Harness against OpenVINO benchmark_app on {Path(c['ir']).name}: p50 {c['harness_p50_ms']:.3f} ms vs "
            f"median {c['benchmark_app_median_ms']:.3f} ms (ratio {c['ratio']:.3f}, "
            f"{'within' if c['passed'] else 'outside'} ±{c['tolerance']:.0%}).",
        ]
    write_text(results.with_suffix(".md"), "\n".join(md) + "\n")
    return checked


if __name__ == "__main__":
    sys.exit(main())
