"""Compression on ELPV binary with efficientnet_lite0, measured in one run:
float, PTQ INT8, QAT INT8, pruned float (42% fewer MACs; 30% and 50% of the
channels), pruned (42% fewer MACs) plus QAT INT8. Pruning recovery and both QATs
distil from the float model. Every artifact is exported to ONNX (fp32 or INT8
Q/DQ) and measured with ONNX Runtime on the test split: accuracy, F1, latency
(batch 1, 2 threads), MACs and file size.

    python benchmarks/compress_elpv.py            # the full benchmark (hours on a CPU)
    python benchmarks/compress_elpv.py --float benchmarks/work/finetune_elpv/flips300_ema_last
                                                  # start from finetune_elpv.py's run
    python benchmarks/compress_elpv.py --smoke    # a minute, generated data: checks the script

Goals (issue 3): QAT loses at most 0.5 points against float and beats PTQ;
pruned + QAT keeps at least 89% with at least 40% fewer MACs."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, latency_fields, machine, smoke_data, today, write_table  # noqa: E402

# The run that the latency benchmark builds its pruned bundles from (run_all.py).
PRUNED_QAT = "pruned42_qat"
COLUMNS = [
    "stage",
    "precision",
    "accuracy",
    "f1",
    "accuracy_pytorch",
    "macs",
    "size_mb",
    "latency_ms_p50",
    "latency_ms_p90",
    "throughput_fps",
]


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def stage(command, args: list[str], out: Path) -> Path:
    """Run one edgetune command (edgetune.api.prune or .quantize) in this process;
    skip it when `out` holds a finished run made by the same arguments (a new
    --float or recipe redoes it)."""
    from edgetune.run import is_run
    from edgetune.runtime.files import write_json

    made_by, resolved = out / "benchmark_args.json", [str(Path(args[0]).resolve()), *args[1:]]
    if is_run(out) and made_by.is_file() and json.loads(made_by.read_text()) == resolved:
        return out
    command(args=[*args, "--out", str(out), "--force"])
    write_json(made_by, resolved)
    return out


def measure(run_dir: Path, label: str, precision: str, work: Path, threads: int, min_time_s: float) -> dict:
    """Export `run_dir` and measure the ONNX file with ONNX Runtime."""
    from edgetune.export.checks import ort_session
    from edgetune.export.onnx import export_onnx, float_model
    from edgetune.models.stats import count_macs
    from edgetune.run import load_run
    from edgetune.runtime.preprocess import preprocess, read_image
    from edgetune.runtime.timing import Policy, summarize, throughput_fps, time_call
    from edgetune.tasks.classification.metrics import classification_metrics

    run = load_run(run_dir)
    path = work / f"{slug(label)}.{precision}.onnx"
    # INT8 for ONNX Runtime: the uint8-activation flavour it fuses into integer kernels.
    exported = export_onnx(run, path, precision=precision, activations="uint8" if precision == "int8" else "keep")
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    pairs = run.split.parts["test"]
    logits = []
    for i in range(0, len(pairs), 32):
        x = preprocess([read_image(p) for p, _ in pairs[i : i + 32]], run.spec)
        logits.append(sess.run(None, {name: x})[0])
    import numpy as np

    m = classification_metrics(np.array([y for _, y in pairs]), np.concatenate(logits), run.classes)
    one = preprocess([read_image(pairs[0][0])], run.spec)
    timing = time_call(lambda: sess.run(None, {name: one}), Policy(warmup=20, min_time_s=min_time_s, min_runs=100))
    t = summarize(timing.samples_s)
    macs, params = count_macs(float_model(run), tuple(run.spec.size))
    return {
        "dataset": "elpv" if run.split.source.startswith("elpv") else run.split.source,
        "model": run.model_name,
        "stage": label,
        "runtime": "onnxruntime",
        "precision": precision,
        "accuracy": m["accuracy"],
        "f1": m["f1"],
        "accuracy_pytorch": run.test_metrics().get("accuracy"),
        **latency_fields(t),
        "throughput_fps": throughput_fps(1, timing),  # over the whole measurement, as its earlier rows (not 1/p50)
        "size_mb": exported["size_mb"],
        "macs": macs,
        "params": params,
        "agreement_with_pytorch": exported["checks"]["agreement"],
        "max_logit_diff": exported["checks"]["max_logit_diff"],
        "run": str(run.dir),
        "threads": threads,
        "machine": machine(),
        "date": today(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/compress_elpv"))
    p.add_argument("--results", type=Path, default=RESULTS / "compress_elpv.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--float",
        dest="float_run",
        type=Path,
        help="an ELPV float run to start from (default: fine-tune finetune_elpv.py's chosen recipe)",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=7,
        help="only the first N rows (float, ptq, qat, pruned -42%% MACs, pruned+qat, pruned 30%%, pruned 50%%)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny model on generated images: checks the script, not the numbers"
    )
    a = p.parse_args()

    from finetune_elpv import CHOSEN, RECIPES, run_recipe

    from edgetune import log
    from edgetune.api import prune, quantize
    from edgetune.run import is_run
    from edgetune.runtime.files import write_json

    log.setup()  # each stage's epochs and summary in the log

    float_recipe, float_extra = RECIPES[CHOSEN], ["--data", "elpv"]
    # Recovery distils from the float model: 2 steps x 2 epochs at lr 5e-4 on labels
    # alone lost 8 points at 30% of the channels (79.4% from 87.2%), 2 x 3 distilled
    # epochs still 3.4 points at 50% fewer MACs (a 0.45 target, overshot before the
    # steps were simulated); the target now sits just past the 40% asked for. Most of
    # those losses came from torch-pruning rounding narrow layers down (a 24-channel
    # stage kept 8): with nearest rounding, 2 x 4 epochs lost none (89.6% from 89.3%,
    # 85.4% from 89.0% before). Each stage keeps its last epoch's weight average, as
    # the float recipe does (the validation split is too small to pick epochs by);
    # the augmentations are the float run's.
    settle = ["--ema", "0.99", "--keep", "last"]
    prune_args = ["--steps", "2", "--epochs", "4", "--lr", "1e-3", "--distill", "0.5", *settle]
    # QAT: 2 epochs ended 1.7 points under the 300 px float run (87.3% against 89.0%),
    # validation accuracy still rising; 4 epochs give it the time.
    qat_args = ["--mode", "qat", "--epochs", "4", "--lr", "1e-4", "--distill", "0.5", *settle]
    min_time = 3.0
    if a.smoke:
        a.work = a.work / "smoke"  # never next to (or over) the real runs
        data = smoke_data(a.work, n_per_class=16)
        float_recipe = [
            "--img-size",
            "32",
            "--epochs",
            "4",
            "--lr",
            "3e-3",
            "--batch-size",
            "8",
            "--warmup-epochs",
            "0",
        ]
        float_extra = ["--data", str(data), "--model", "test_efficientnet", "--no-pretrained"]
        prune_args = ["--steps", "1", "--epochs", "1", "--lr", "1e-3", "--batch-size", "8", "--distill", "0.5", *settle]
        qat_args = ["--mode", "qat", "--epochs", "2", "--lr", "1e-3", "--batch-size", "8", "--distill", "0.5", *settle]
        a.results, min_time = a.work / "smoke.json", 0.2
    w = a.work
    started = time.time()
    fl = a.float_run or w / "float"
    if not a.float_run and not is_run(fl):
        run_recipe("float", float_recipe, w, float_extra)
    # (row, its run: made when first needed, precision). The goal's rows first: the
    # MAC target just past the 40% asked for, then QAT on it, taught by the float model.
    # The latency benchmark needs only the rows up to "pruned+qat".
    plan = [
        ("float", lambda: fl, "fp32"),
        ("ptq", lambda: stage(quantize, [str(fl), "--mode", "ptq"], w / "ptq"), "int8"),
        ("qat", lambda: stage(quantize, [str(fl), *qat_args], w / "qat"), "int8"),
        (
            "pruned -42% MACs",
            lambda: stage(prune, [str(fl), "--target-macs", "0.42", *prune_args], w / "pruned42"),
            "fp32",
        ),
        (
            "pruned+qat",
            lambda: stage(quantize, [str(w / "pruned42"), *qat_args, "--teacher", str(fl)], w / PRUNED_QAT),
            "int8",
        ),
        ("pruned 30%", lambda: stage(prune, [str(fl), "--ratio", "0.3", *prune_args], w / "pruned30"), "fp32"),
        ("pruned 50%", lambda: stage(prune, [str(fl), "--ratio", "0.5", *prune_args], w / "pruned50"), "fp32"),
    ]
    rows = []
    for label, make, precision in plan[: a.rows]:
        # Each row is measured right after its stage, on the otherwise idle machine,
        # and kept: a rerun (or a longer --rows) measures only the new rows.
        kept = w / "rows" / f"{slug(label)}.json"
        run_dir = make()
        if (
            kept.is_file()
            and kept.stat().st_mtime > (Path(run_dir) / "run.json").stat().st_mtime
            and json.loads(kept.read_text())["run"] == str(run_dir)
        ):
            rows.append(json.loads(kept.read_text()))
        else:
            rows.append(measure(run_dir, label, precision, w / "onnx", a.threads, min_time))
            write_json(kept, rows[-1])
        print(json.dumps({k: rows[-1][k] for k in COLUMNS}), flush=True)
    base = rows[0]
    for r in rows:
        r["macs_vs_float"] = r["macs"] / base["macs"]
        r["speedup_vs_float"] = base["latency_ms_p50"] / r["latency_ms_p50"]
    write_json(a.results, {"rows": rows, "wall_s": round(time.time() - started, 1)})
    write_table(
        rows,
        COLUMNS + ["macs_vs_float", "speedup_vs_float"],
        a.results.with_suffix(".md"),
        f"ELPV binary compression, {base['model']} (ONNX Runtime, batch 1, {a.threads} threads)",
        "Goals: QAT INT8 within 0.5 points of float and above PTQ; pruned+QAT >= 89% with >= 40% fewer MACs.\n\n"
        f"Machine: {base['machine']}, {base['date']}.",
    )


if __name__ == "__main__":
    main()
