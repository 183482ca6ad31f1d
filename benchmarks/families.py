"""The seed families side by side at 224 px, batch 1, 2 threads, in one run: MACs,
parameters, PyTorch eager FP32, ONNX Runtime FP32/INT8 and OpenVINO FP32/INT8 p50
latency (every row through `edgetune bench`'s harness), each INT8 artifact's top-1
agreement with the PyTorch FP32 model, and the precision each build shipped.

Each model is built by `edgetune build --target cpu --target intel` at its default
size: fine-tuned for a few epochs on generated images (efficientnet_lite0 from its
ImageNet weights, which ship offline; the others from random initial weights, which
the fine-tuning makes decisive), PTQ on those images, then benchmarked with
`edgetune bench`. No jetson target here: it would make the one quantized model's
activations signed, which costs ONNX Runtime its fused Conv + ReLU
(docs/bundles.md); tests/test_families.py builds all three targets.

    python benchmarks/families.py [--model NAME ...]

Writes benchmarks/results/families.{json,md}, with the machine's load average
before and after. Builds live in benchmarks/work/families (a rerun reuses them; the
build's stage cache skips finished work).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml
from common import RESULTS, machine, today, write_table

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "families"
EDGETUNE = [sys.executable, "-m", "edgetune.cli.main"]
SEEDS = ["convnext_atto", "vit_tiny_patch16_224", "resnet18", "efficientnet_lite0", "mobilenetv3_large_100"]
MODELS = [
    *SEEDS,
    "deit_tiny_patch16_224",
    "resnet50",
    "efficientnet_b0",
    "convnext_nano",
]
SIZE = 224
EPOCHS = 3


def make_images(root: Path, n_per_class: int = 48, seed: int = 0) -> Path:
    """Two classes of 224 px images: smooth bright noise, the second with a dark line."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("ok", "defect")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = cv2.GaussianBlur(rng.normal(160, 40, (SIZE, SIZE, 3)), (0, 0), 3).clip(0, 255).astype(np.uint8)
            if c:
                off = int(rng.integers(-SIZE // 4, SIZE // 4))
                cv2.line(img, (0, SIZE // 2 + off), (SIZE - 1, SIZE // 2 - off), (20, 20, 20), 8)
            cv2.imwrite(str(root / name / f"{i:03d}.png"), img)
    return root


def build(model: str, data: Path) -> Path:
    out = WORK / model
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "build.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": str(data),
                "model": model,
                "pretrained": model == "efficientnet_lite0",  # the one family whose weights ship offline
                "img-size": SIZE,
                "finetune": {"epochs": EPOCHS, "batch-size": 16},
                "quantize": {"mode": "ptq", "calib-count": 16},
            }
        )
    )
    subprocess.run(
        [*EDGETUNE, "--config", str(cfg), "build", "--target", "cpu", "--target", "intel", "--out", str(out)],
        cwd=ROOT,
        check=True,
    )
    return out


def bench(out: Path, data: Path, threads: int, min_time: float, min_runs: int) -> list[dict]:
    """PyTorch FP32 (the float run) and every precision of the cpu and intel bundles."""
    from edgetune.runtime.files import read_json

    path = out / "bench.json"
    subprocess.run(
        [
            *EDGETUNE,
            "bench",
            str(out / "finetune"),
            str(out / "bundle-cpu"),
            str(out / "bundle-intel"),
            "--precision",
            "all",
            "--no-baseline",
            "--batch",
            "1",
            "--threads",
            str(threads),
            "--min-time",
            str(min_time),
            "--min-runs",
            str(min_runs),
            "--data",
            str(data),
            "--json",
            str(path),
        ],
        cwd=ROOT,
        check=True,
    )
    data = read_json(path)
    return data["rows"] if isinstance(data, dict) else data


def paired_speedup(out: Path, target: str, threads: int, rounds: int) -> float:
    """fp32 p50 over INT8 p50 of one bundle, timed in alternating bursts in one
    process: this 2-core machine has slow spells (both slow down, not alike), so
    two artifacts timed minutes apart are not comparable, while a paired ratio is."""
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.timing import Policy, time_alternating

    bundle = load_bundle(out / f"bundle-{target}")
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    fns = {}
    for precision in ("fp32", "int8"):
        session = bundle.open(threads=threads, precision=precision)
        fns[precision] = lambda s=session: s.run(x)
    t = time_alternating(fns, Policy(warmup=5, min_time_s=1.0, min_runs=30), rounds=rounds)
    return t["fp32"].stats()["p50_ms"] / t["int8"].stats()["p50_ms"]


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def shipped(out: Path, target: str) -> str:
    """The main artifact's precision the build chose for a bundle (the manifest's
    precision_choice), with the compile stage's own paired speedup."""
    from edgetune.runtime.files import read_json

    choice = read_json(out / f"bundle-{target}" / "manifest.json").get("precision_choice") or {}
    speed = choice.get("speed") or {}
    return f"{choice.get('precision')}" + (f" ({speed['speedup']:.2f}x)" if speed.get("speedup") else "")


def summary(model: str, rows: list[dict], out: Path, args) -> dict:
    by = {(r["runtime"], r["precision"]): r for r in rows}
    p50 = {k: r["latency_ms_p50"] for k, r in by.items()}
    torch_row = by[("pytorch", "fp32")]
    result = {
        "model": model,
        "macs": torch_row["macs"],
        "params": torch_row["params"],
        "pytorch_fp32_ms": p50[("pytorch", "fp32")],
    }
    for runtime, short, target in (("onnxruntime", "ort", "cpu"), ("openvino", "ov", "intel")):
        fp32, int8 = p50.get((runtime, "fp32")), p50.get((runtime, "int8"))
        result.update(
            {
                f"{short}_fp32_ms": fp32,
                f"{short}_int8_ms": int8,
                f"{short}_int8_speedup_bench": fp32 / int8 if fp32 and int8 else None,
                f"{short}_int8_speedup": paired_speedup(out, target, args.threads, args.rounds),
                f"{short}_int8_agreement": by.get((runtime, "int8"), {}).get("agreement"),
            }
        )
    result["ort_shipped"], result["ov_shipped"] = shipped(out, "cpu"), shipped(out, "intel")
    return result


def write(rows: list[dict], table: list[dict], args, load: dict) -> None:
    from edgetune.runtime.files import write_json

    write_json(
        RESULTS / "families.json",
        {"rows": rows, "summary": table, "threads": args.threads, "image_size": SIZE, "note": args.note, "load": load},
    )
    shown = [{**t, "mmacs": t["macs"] / 1e6, "mparams": t["params"] / 1e6} for t in table]
    write_table(
        shown,
        [
            "model",
            "mmacs",
            "mparams",
            "pytorch_fp32_ms",
            "ort_fp32_ms",
            "ort_int8_ms",
            "ort_int8_speedup",
            "ov_fp32_ms",
            "ov_int8_ms",
            "ov_int8_speedup",
            "ort_int8_agreement",
            "ov_int8_agreement",
            "ort_shipped",
            "ov_shipped",
        ],
        RESULTS / "families.md",
        f"Seed families at {SIZE} px, batch 1, {args.threads} threads (p50 ms)",
        intro=f"Machine: {machine()}, {today()}; load average (1/5/15 min) {load['before']} before the run and "
        f"{load['after']} after it. Each model fine-tuned {EPOCHS} epochs on the generated images "
        "(efficientnet_lite0 from ImageNet weights, the others from random ones), PTQ INT8 (`edgetune build`), every "
        "latency from `edgetune bench` in one run. Speedup: FP32 p50 over INT8 p50 of the same bundle, timed in "
        f"{args.rounds} alternating rounds in one process (the p50 columns, timed one after the other, drift with the "
        "machine's slow spells; the JSON keeps their ratio as *_speedup_bench). Agreement: "
        "INT8 top-1 against PyTorch FP32 on the generated images. Shipped: the main artifact the build chose, with "
        "its own paired INT8 speedup." + (f" {args.note}" if args.note else ""),
        notes="What is quantized per family, what stays float and why: docs/compression.md (INT8 per family).",
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", choices=MODELS, help="only these (default: the five seed families)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=3.0)
    p.add_argument("--min-runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds of the paired INT8/fp32 timing")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args()
    data = WORK / "images"
    if not data.is_dir():
        make_images(data)
    rows, table = [], []
    load = {"before": loadavg(), "after": None}
    for model in args.model or SEEDS:
        out = build(model, data)
        got = bench(out, data, args.threads, args.min_time, args.min_runs)
        for r in got:
            r.update(
                dataset="generated-224",
                stage="finetune" if r["runtime"] == "pytorch" else "ptq",
                machine=machine(),
                date=today(),
                note=args.note,
            )
            r.pop("speedup_vs_pytorch", None)
        rows += got
        table.append(summary(model, got, out, args))
        print(table[-1], flush=True)
        load["after"] = loadavg()
        write(rows, table, args, load)  # after each model: an interrupted run keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
