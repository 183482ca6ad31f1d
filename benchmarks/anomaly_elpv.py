"""Anomaly detection on ELPV from good cells only: PatchCore on efficientnet_lite0
(offline ImageNet weights), fitted on the train split's cells with defect
probability 0, tested on the test split with anomalous = probability >= 0.5 (as
the classifier). Built for cpu (ONNX Runtime) and intel (OpenVINO): float and
INT8 (post-training quantization of the feature extractor) measured in one run on
the same test images: image AUROC, AUPR, F1 and false alarms at the threshold
chosen on validation, latency (batch 1, --threads; every artifact timed in
alternating blocks, so the ratios are of one run), size; bank size and fit time.

The cells with probability 1/3 are "unsure" labels: the classifier counts them as
good (p < 0.5), but they were fitted on as neither. Rows report the AUROC with
them counted normal (the classifier's definition) and left out.

    python benchmarks/anomaly_elpv.py             # about 30 min on 2 busy cores
    python benchmarks/anomaly_elpv.py --smoke     # a minute, generated data: checks the script

The supervised classifier's test ROC-AUC comes from results/finetune_elpv.json:
its split (`--data elpv`, seed 0) holds the same test images, since ELPV's binary
and 4-class sources stratify on the same groups.

The label-budget curve (`--part label-budget`) trains that classifier at the
detector's image size with every normal (p < 0.5) train cell and only 10, 30, 100
or all of the defective ones (nested, seeded subsets), on the detector's split, and
scores each on the same test images. Its recipe keeps the last epoch (`--keep
last`), so the validation split, left whole, picks nothing.

    python benchmarks/anomaly_elpv.py --part label-budget   # about 25 min on 2 idle cores"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, latency_fields, machine, smoke_data, today  # noqa: E402

COLUMNS = [
    "stage",
    "runtime",
    "precision",
    "auroc",
    "auroc_without_p13",
    "aupr",
    "f1",
    "false_alarm_rate",
    "recall",
    "latency_ms_p50",
    "latency_ms_p90",
    "speedup_vs_fp32",
    "size_mb",
    "bank_rows",
    "bank_mb",
]


def levels_of(data: str, normal: str) -> dict[str, float]:
    """Each image's defect probability (ELPV), or 0/1 for normal/other (a folder)."""
    from edgetune.data.sources import load_source

    source = load_source(data)
    if data.startswith("elpv"):
        value = {"p0": 0.0, "p1/3": 1 / 3, "p2/3": 2 / 3, "p1": 1.0}
        return {it.path: value[source.classes[it.target]] for it in source.items}
    return {it.path: float(source.classes[it.target] != normal) for it in source.items}


def measure(session, x: np.ndarray, levels: np.ndarray) -> dict:
    """AUROC (p = 1/3 counted normal, and left out), F1 and false alarms of one artifact."""
    from edgetune.tasks.anomaly.metrics import anomaly_metrics

    scores = np.concatenate([session.detect(x[i : i + 16])["score"] for i in range(0, len(x), 16)])
    anomalous = levels >= 0.5
    m = anomaly_metrics(anomalous, scores)
    keep = ~np.isclose(levels, 1 / 3)
    m_without = anomaly_metrics(anomalous[keep], scores[keep])
    m_own = anomaly_metrics(levels > 0, scores)  # what the model was fitted against: any defect probability
    return {
        "auroc": m["auroc"],
        "auroc_without_p13": m_without["auroc"],
        "auroc_any_defect": m_own["auroc"],
        "aupr": m["aupr"],
        "f1": m["f1"],
        "accuracy": m["accuracy"],
        "false_alarm_rate": m["false_alarm_rate"],
        "recall": m["recall"],
        "n_images": m["n"],
        "n_anomalous": m["n_anomalous"],
    }


def latencies(sessions: dict, x: np.ndarray, min_time_s: float) -> dict:
    """Batch-1 latency of every session, timed in alternating blocks: the machine's
    drift falls on all alike, so their ratios are of one run."""
    from edgetune.runtime.timing import Policy, time_alternating

    calls = {k: (lambda s=s: s.run(x[:1])) for k, s in sessions.items()}
    timings = time_alternating(calls, Policy(warmup=5, min_time_s=min_time_s, min_runs=30), rounds=5)
    return {k: latency_fields(t.stats()) for k, t in timings.items()}


def classifier_auc() -> dict:
    """The supervised classifier's test ROC-AUC over the committed ELPV runs."""
    path = RESULTS / "finetune_elpv.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    aucs = [r["roc_auc"] for r in rows if isinstance(r.get("roc_auc"), float)]
    return {"runs": len(aucs), "min": min(aucs), "max": max(aucs), "mean": float(np.mean(aucs))} if aucs else {}


BUDGETS = (10, 30, 100, None)  # defective train images the classifier sees; None: all
# The finetune_elpv recipe (EMA, last epoch, flips) at the detector's image size.
CURVE_RECIPE = {
    "epochs": 12,
    "lr": 2e-3,
    "freeze": "last:5",
    "ema": 0.99,
    "keep": "last",
    "augment": "hflip,vflip,brightness=0.1,contrast=0.1",
}
CURVE_COLUMNS = ["labelled_defects", "normal_images", "method", "auroc", "accuracy", "f1", "train_s"]


def budget_split(run, budget: int | None, seed: int = 0):
    """The classifier's split (`--data elpv`, the detector run's seed and fractions)
    with only `budget` of the train split's defective images (a seeded permutation's
    first ones, so the subsets nest); checked to hold the detector's test images."""
    from edgetune.data.sources import load_source
    from edgetune.data.split import make_split

    config = run.info["history"][-1]["config"]
    split = make_split(load_source("elpv"), run.split.seed, config["val-frac"], config["test-frac"])
    if [p for p, _ in split.parts["test"]] != [p for p, _ in run.split.parts["test"]]:
        raise SystemExit(
            "the classifier's split does not hold the detector's test images: the curve would compare different images"
        )
    train = split.parts["train"]
    defective = [i for i, (_, y) in enumerate(train) if y == 1]
    keep = (
        set(np.random.default_rng(seed).permutation(defective)[:budget].tolist())
        if budget is not None
        else set(defective)
    )
    split.parts["train"] = [item for i, item in enumerate(train) if train[i][1] == 0 or i in keep]
    return split, len(keep), len(train) - len(defective)


def label_budget(run, work: Path, img_size: int) -> list[dict]:
    """The supervised classifier trained with each budget of defective images."""
    from edgetune import api
    from edgetune.run import load_run

    rows = []
    for budget in BUDGETS:
        split, n_defective, n_normal = budget_split(run, budget)
        out = work / f"classifier_{budget or 'all'}"
        if not (out / "run.json").is_file():
            out.mkdir(parents=True, exist_ok=True)
            split.save(out / "split.json")  # --resume takes the split found in --out
            api.finetune(
                data=split.source, out=str(out), resume=True, model=run.model_name, img_size=img_size, **CURVE_RECIPE
            )
        record = load_run(out).info["history"][-1]
        test = record["metrics"]["test"]
        rows.append(
            {
                "labelled_defects": n_defective,
                "normal_images": n_normal,
                "method": "supervised classifier",
                "auroc": test.get("roc_auc"),
                "accuracy": test["accuracy"],
                "f1": test["f1"],
                "train_s": record["seconds"],
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--part",
        choices=["detector", "label-budget", "all"],
        default="all",
        help="what to measure; the other part's results are kept from the results file",
    )
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--coreset", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "anomaly_elpv")
    p.add_argument("--results", type=Path, default=RESULTS / "anomaly_elpv.json")
    p.add_argument(
        "--smoke", action="store_true", help="tiny model on generated images: checks the script, not the numbers"
    )
    p.add_argument(
        "--reuse", action="store_true", help="keep WORK/fit when it is there and the build's finished stages"
    )
    p.add_argument("--note", default="", help="how the machine was loaded during the run, written with the results")
    a = p.parse_args()

    from edgetune import api, log
    from edgetune.run import load_run
    from edgetune.runtime.files import read_json, write_json

    log.setup()
    data, normal = "elpv:4class", "p0"
    options = {
        "model": "efficientnet_lite0",
        "img_size": a.img_size,
        "coreset": a.coreset,
        "image_score": True,
        "patch_features": "coarse",  # image AUROC 0.828 against fine's 0.819 (docs/anomaly.md)
    }
    if a.smoke:
        a.work = a.work / "smoke"  # never next to (or over) the real runs
        data, normal = str(smoke_data(a.work, n_per_class=24)), "ok"
        options = {"model": "test_resnet", "pretrained": False, "img_size": 32, "coreset": 0.1}
        a.results = a.work / "smoke.json"
    run_dir = a.work / "fit"
    if not ((a.reuse or a.part == "label-budget") and (run_dir / "run.json").is_file()):
        run_dir = api.finetune(task="anomaly", data=data, normal=normal, out=str(run_dir), force=True, **options)
    run = load_run(run_dir)
    results = read_json(a.results) if a.results.is_file() and a.part != "all" else {}
    if a.part in ("detector", "all"):
        results = {**results, **detector(a, run, data, normal, options)}
    if a.part in ("label-budget", "all"):
        if a.smoke:  # the generated data has no ELPV split to follow: checks the detector part only
            log.console.print("--smoke: the label-budget curve needs ELPV; skipped.")
        else:
            results["label_budget"] = {
                "rows": label_budget(run, a.work, a.img_size),
                "recipe": CURVE_RECIPE,
                "machine": machine(),
                "date": today(),
                "note": a.note,
            }
    write_json(a.results, results)
    write_report(results, a.results.with_suffix(".md"))
    log.console.print(f"Results: {a.results} and {a.results.with_suffix('.md')}")


def detector(a, run, data: str, normal: str, options: dict) -> dict:
    """Float and INT8 bundles for cpu and intel: AUROC, F1, false alarms, latency."""
    from edgetune import api, log
    from edgetune.errors import EdgetuneError
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import preprocess, read_image

    min_time = 0.2 if a.smoke else 6.0
    fit = run.info["history"][-1]["metrics"]
    try:
        bundles = api.build(["cpu", "intel"], out=a.work / "build", start=run.dir, force=not a.reuse)
    except EdgetuneError as e:  # a failed AUROC gate is a finding to measure, not the end: the bundles are written
        log.console.print(f"[yellow]{e}[/]")
        bundles = {t: a.work / "build" / f"bundle-{t}" for t in ("cpu", "intel")}

    levels_by_path = levels_of(data, normal)
    test = [path for path, _ in run.split.parts["test"]]
    levels = np.array([levels_by_path[path] for path in test])
    x = preprocess([read_image(path) for path in test], run.spec)
    sessions = {}
    for target, path in bundles.items():
        bundle = load_bundle(path)
        for precision in bundle.precisions:
            sessions[(target, precision)] = (bundle, bundle.open(threads=a.threads, precision=precision))
    timed = latencies({k: s for k, (_, s) in sessions.items()}, x, min_time)
    rows = []
    for (target, precision), (bundle, session) in sessions.items():
        m = {**measure(session, x, levels), **timed[(target, precision)]}
        fp32 = timed.get((target, "fp32"))
        rows.append(
            {
                "dataset": "elpv",
                "model": f"{run.model_name} PatchCore",
                "stage": "ptq" if precision == "int8" else "float",
                "runtime": session.name,
                "precision": precision,
                **m,
                "speedup_vs_fp32": fp32["latency_ms_p50"] / m["latency_ms_p50"] if fp32 else None,
                "size_mb": bundle.artifact_size(precision) / 1e6,
                "macs": bundle.manifest["model"].get("macs"),
                "bank_rows": fit["bank"]["rows"],
                "bank_mb": fit["bank"]["size_mb"],
                "threads": a.threads,
                "machine": machine(),
                "date": today(),
            }
        )
        log.console.print(
            f"{target} {precision}: AUROC {m['auroc']:.4f} (without p=1/3 {m['auroc_without_p13']:.4f}), F1 "
            f"{m['f1']:.4f}, false alarms {m['false_alarm_rate']:.2%}, {m['latency_ms_p50']:.2f} ms"
        )
    return {
        "rows": rows,
        "command": " ".join(sys.argv),
        "data": data,
        "normal": normal,
        "options": options,
        "threads": a.threads,
        "fit": {
            "fit_seconds": fit["fit_seconds"],
            "bank": fit["bank"],
            "threshold": fit["threshold"],
            "test_pytorch": fit["test"],
            "test_images": len(test),
        },
        "supervised_classifier_roc_auc": classifier_auc(),
        "machine": machine(),
        "date": today(),
        "note": a.note or "Compare rows of this run only.",
    }


def write_report(results: dict, path: Path) -> None:
    """The Markdown page: the detector's table, then the label-budget curve."""
    from common import markdown_table

    from edgetune.runtime.files import write_text

    fit, o, sup = results["fit"], results["options"], results.get("supervised_classifier_roc_auc") or {}
    lines = [
        "# Anomaly detection on ELPV from good cells only (PatchCore)",
        "",
        f"Fitted on {fit['bank']['images']} train cells with defect probability 0 ({o['model']}, {o['img_size']} px, "
        f"coreset {o['coreset']}{', --image-score' if o.get('image_score') else ''}"
        f"{', --patch-features ' + o['patch_features'] if o.get('patch_features') else ''}): "
        f"bank {fit['bank']['rows']} x {fit['bank']['dim']} ({fit['bank']['size_mb']:.1f} MB), "
        f"fit {fit['fit_seconds']:.0f} s on "
        f"{results['machine']}. Test split: {fit.get('test_images', '')} cells, anomalous = p >= 0.5; threshold: "
        f"{fit['threshold']['rule']} (validation anomalies = any p > 0). "
        f"Latency: batch 1, {results['threads']} threads, every artifact timed in alternating blocks in one run; "
        "speedup_vs_fp32: the same bundle's fp32 p50 over this row's.",
        "",
        *markdown_table(results["rows"], COLUMNS),
        "",
    ]
    if sup:
        lines += [
            f"Supervised classifier (finetune_elpv.py, {sup['runs']} runs of several recipes and seeds; those with "
            f"split seed 0 hold these test images): test ROC-AUC {sup['min']:.3f}-{sup['max']:.3f}, mean "
            f"{sup['mean']:.3f}.",
            "",
        ]
    lines += [
        "auroc: p = 1/3 cells counted normal (the classifier's labels); auroc_without_p13: those cells left out. f1, "
        "recall, false_alarm_rate: at the bundle's threshold (normalised score 0.5). " + results["note"],
        "",
    ]
    curve = results.get("label_budget")
    if curve:
        float_row = next((r for r in results["rows"] if r["precision"] == "fp32"), None)
        detector_row = (
            [
                {
                    "labelled_defects": 0,
                    "normal_images": fit["bank"]["images"],
                    "method": "PatchCore (anomaly)",
                    "auroc": float_row["auroc"],
                    "f1": float_row["f1"],
                    "train_s": fit["fit_seconds"],
                }
            ]
            if float_row
            else []
        )
        lines += [
            "## Label budget: how many labelled defects the classifier needs",
            "",
            f"The supervised classifier ({o['model']}, {o['img_size']} px, {curve['recipe']['epochs']} epochs, EMA, "
            "last epoch) trained on every normal train cell (p < 0.5) and only this many defective ones, tested on "
            "the same test cells as the detector; the detector saw no defect (its normal images are the p = 0 "
            f"cells). auroc: test ROC-AUC, anomalous = p >= 0.5. Measured on {curve['machine']}, {curve['date']}. "
            f"{curve.get('note', '')}".rstrip(),
            "",
            *markdown_table(detector_row + curve["rows"], CURVE_COLUMNS),
            "",
        ]
    write_text(path, "\n".join(lines))


if __name__ == "__main__":
    main()
