"""Latency-aware pruning (`--target-latency`) against MAC-targeted pruning
(`--target-macs`) on ELPV, from one float run, measured on OpenVINO INT8.

Three arms from the same float run: unpruned, `--target-macs M`, and
`--target-latency T` timed on OpenVINO INT8 while pruning. Each pruned arm gets the
same recovery fine-tuning (one step, --epochs at lr 5e-4); every arm is then built
for `intel` with INT8 quantization (QAT for --qat-epochs, as a build does by default,
or --quantize ptq), and its INT8 bundle is measured in one run: accuracy on the float run's test split, and
batch-1 latency in interleaved rounds, one session open at a time; the speed-ups are the median of the ratios
within each round (the machine's speed drifts between rounds).

    python benchmarks/prune_latency_elpv.py --float RUN_DIR [--target-macs 0.42] [--target-latency 0.33]
        [--epochs 2] [--quantize ptq]
    python benchmarks/prune_latency_elpv.py --smoke     # a few minutes, generated data: checks the script

Writes benchmarks/results/prune_latency_elpv.{json,md} (with --quantize ptq:
prune_latency_elpv_ptq.{json,md}).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, smoke_data, today, write_table  # noqa: E402

COLUMNS = [
    "arm",
    "macs_vs_unpruned",
    "accuracy_int8",
    "accuracy_pytorch",
    "latency_ms_p50",
    "latency_ms_p90",
    "speedup_vs_unpruned",
    "latency_reduction",
    "size_mb",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float", dest="float_run", type=Path, help="the float fine-tuned ELPV run to prune")
    p.add_argument("--target-macs", type=float, default=0.42)
    p.add_argument("--target-latency", type=float, default=0.33)
    p.add_argument("--epochs", type=int, default=2, help="recovery epochs after pruning (both arms)")
    p.add_argument(
        "--quantize", choices=["qat", "ptq"], default="qat", help="how every arm is quantized to INT8 by its build"
    )
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "prune_latency_elpv")
    p.add_argument("--results", type=Path, help="default: results/prune_latency_elpv.json (_ptq with --quantize ptq)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny model on generated images: checks the script, not the numbers"
    )
    p.add_argument("--note", default="", help="how the machine was loaded during the run, written with the results")
    a = p.parse_args()

    from edgetune import api, log
    from edgetune.errors import EdgetuneError
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.files import write_json
    from edgetune.runtime.preprocess import preprocess, read_image
    from edgetune.runtime.timing import Policy, summarize, time_call

    log.setup()
    min_time = 0.5
    a.results = a.results or RESULTS / f"prune_latency_elpv{'_ptq' if a.quantize == 'ptq' else ''}.json"
    quantize = {"mode": "ptq"} if a.quantize == "ptq" else {"mode": "qat", "epochs": a.qat_epochs, "lr": 1e-4}
    if a.smoke:
        a.work, min_time, a.rounds = a.work / "smoke", 0.2, 2  # never next to (or over) the real runs
        a.results = a.work / "smoke.json"
        a.float_run = a.work / "float"
        if not (a.float_run / "run.json").is_file():
            api.finetune(
                data=str(smoke_data(a.work, n_per_class=24)),
                model="test_efficientnet",
                pretrained=False,
                img_size=96,
                epochs=2,
                out=str(a.float_run),
                force=True,
            )
        a.target_latency = 0.1  # a tiny model's latency is mostly the runtime's own overhead
    if a.float_run is None:
        p.error("--float RUN_DIR is required (or --smoke)")
    from edgetune.targets.profile import load_profile

    # channel counts in multiples of the intel profile's, as a build for intel prunes
    recovery = {"steps": 1, "epochs": a.epochs, "lr": 5e-4, "round_to": load_profile("intel").channel_multiple}
    arms = {
        "unpruned": None,
        f"target-macs {a.target_macs:g}": {"target_macs": a.target_macs},
        f"target-latency {a.target_latency:g} (openvino int8)": {
            "target_latency": a.target_latency,
            "latency_runtime": "openvino",
            "latency_precision": "int8",
            "latency_threads": a.threads,
        },
    }
    runs, bundles, build = {}, {}, a.work / a.quantize
    for i, (arm, options) in enumerate(arms.items()):
        run_dir = a.float_run if options is None else a.work / f"pruned{i}"
        if options is not None and not (run_dir / "run.json").is_file():
            api.prune(a.float_run, out=str(run_dir), force=True, **recovery, **options)
        runs[arm] = load_run(run_dir)
        try:
            api.build(["intel"], out=build / f"build{i}", start=run_dir, config={"quantize": quantize})
        except EdgetuneError as e:  # an INT8 drop beyond the gate is a number to report here: the bundle is written
            log.console.print(f"[yellow]{e}[/]")
        bundles[arm] = load_bundle(build / f"build{i}" / "bundle-intel")

    base = runs["unpruned"]
    test = base.split.parts["test"]
    x = preprocess([read_image(path) for path, _ in test], base.spec)
    y = np.array([label for _, label in test])
    # One session open at a time: an idle compiled model's threads disturb the one timed.
    samples, per_round = {arm: [] for arm in arms}, {arm: [] for arm in arms}
    for _ in range(a.rounds):
        for arm, b in bundles.items():
            s = b.open(threads=a.threads, precision="int8")
            t = time_call(lambda: s.run(x[:1]), Policy(warmup=5, min_time_s=min_time, min_runs=30)).samples_s
            samples[arm] += t
            per_round[arm].append(float(np.median(t)))
            del s
    sessions = {arm: b.open(threads=a.threads, precision="int8") for arm, b in bundles.items()}
    macs0 = bundles["unpruned"].manifest["model"]["macs"]
    rows = []
    for arm, s in sessions.items():
        logits = np.concatenate([s.run(x[i : i + 16]) for i in range(0, len(x), 16)])
        stats = summarize(samples[arm])
        info = runs[arm].info["history"][-1]
        rows.append(
            {
                "arm": arm,
                "macs": bundles[arm].manifest["model"]["macs"],
                "macs_vs_unpruned": bundles[arm].manifest["model"]["macs"] / macs0,
                "accuracy_int8": float((logits.argmax(1) == y).mean()),
                "accuracy_pytorch": info["metrics"]["test"]["accuracy"],
                "latency_ms_p50": stats["p50_ms"],
                "latency_ms_p90": stats["p90_ms"],
                "size_mb": bundles[arm].artifact_size("int8") / 1e6,
                "plan": info["metrics"].get("latency"),
                "runtime": s.name,
                "inference_precision": getattr(s, "inference_precision", None),
            }
        )
    for r in rows:  # ratios within each round, then their median: the machine's speed drifts between rounds
        ratios = [u / m for u, m in zip(per_round["unpruned"], per_round[r["arm"]])]
        r["speedup_vs_unpruned"] = float(np.median(ratios))
        r["latency_reduction"] = 1 - 1 / r["speedup_vs_unpruned"]
        log.console.print(
            f"{r['arm']}: MACs x{r['macs_vs_unpruned']:.2f}, INT8 accuracy {r['accuracy_int8']:.4f}, "
            f"{r['latency_ms_p50']:.2f} ms ({r['speedup_vs_unpruned']:.2f}x)"
        )
    meta = {
        "command": " ".join(sys.argv),
        "float_run": str(a.float_run),
        "model": base.model_name,
        "img_size": list(base.spec.size),
        "recovery": recovery,
        "quantize": quantize,
        "threads": a.threads,
        "rounds": a.rounds,
        "machine": machine(),
        "date": today(),
        "note": a.note or "Compare rows of this run only.",
    }
    write_json(a.results, {"rows": rows, **meta})
    h, w = base.spec.size
    write_table(
        rows,
        COLUMNS,
        a.results.with_suffix(".md"),
        "Latency-aware against MAC-targeted pruning (ELPV, OpenVINO INT8)",
        intro=(
            f"{base.model_name} at {h}x{w} from {a.float_run.name}; each pruned arm: one step, channels in multiples "
            f"of {recovery['round_to']}, {a.epochs} recovery epochs at lr 5e-4; every arm built for intel with "
            f"{'PTQ' if a.quantize == 'ptq' else f'QAT ({a.qat_epochs} epoch, lr 1e-4)'} INT8. Test split: "
            f"{len(test)} images. Latency: OpenVINO INT8, batch 1, {a.threads} threads, {a.rounds} interleaved "
            f"rounds, on {machine()}."
        ),
        notes=meta["note"],
    )
    log.console.print(f"Results: {a.results} and {a.results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
