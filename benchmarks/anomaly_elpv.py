"""Anomaly detection on ELPV from good cells only: PatchCore on efficientnet_lite0
(offline ImageNet weights), fitted on the train split's cells with defect
probability 0, tested on the test split with anomalous = probability >= 0.5 (as
the classifier). Built for cpu (ONNX Runtime) and intel (OpenVINO): float and
INT8 (post-training quantization of the feature extractor) measured in one run on
the same test images: image AUROC, AUPR, F1 and false alarms at the threshold
chosen on validation, latency (batch 1, --threads), size; bank size and fit time.

The cells with probability 1/3 are "unsure" labels: the classifier counts them as
good (p < 0.5), but they were fitted on as neither. Rows report the AUROC with
them counted normal (the classifier's definition) and left out.

    python benchmarks/anomaly_elpv.py             # about 30 min on 2 busy cores
    python benchmarks/anomaly_elpv.py --smoke     # a minute, generated data: checks the script

The supervised classifier's test ROC-AUC comes from results/finetune_elpv.json
(its own seeded split of the same 2,624 cells: the same strata, not the same
images); the label-budget curve (classifier with 10/30/100 defective images) is
not measured here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, smoke_data, today, write_table  # noqa: E402

COLUMNS = ["stage", "runtime", "precision", "auroc", "auroc_without_p13", "aupr", "f1", "false_alarm_rate", "recall", "latency_ms_p50",
           "latency_ms_p90", "size_mb", "bank_rows", "bank_mb"]


def levels_of(data: str, normal: str) -> dict[str, float]:
    """Each image's defect probability (ELPV), or 0/1 for normal/other (a folder)."""
    from edgetune.data.sources import load_source

    source = load_source(data)
    if data.startswith("elpv"):
        value = {"p0": 0.0, "p1/3": 1 / 3, "p2/3": 2 / 3, "p1": 1.0}
        return {it.path: value[source.classes[it.label]] for it in source.items}
    return {it.path: float(source.classes[it.label] != normal) for it in source.items}


def measure(session, x: np.ndarray, levels: np.ndarray, threads: int, min_time_s: float) -> dict:
    from edgetune.metrics import anomaly_metrics
    from edgetune.runtime.timing import Policy, time_call

    scores = np.concatenate([session.detect(x[i:i + 16])["score"] for i in range(0, len(x), 16)])
    anomalous = levels >= 0.5
    m = anomaly_metrics(anomalous, scores)
    keep = ~np.isclose(levels, 1 / 3)
    m_without = anomaly_metrics(anomalous[keep], scores[keep])
    m_own = anomaly_metrics(levels > 0, scores)  # what the model was fitted against: any defect probability
    stats = time_call(lambda: session.run(x[:1]), Policy(warmup=5, min_time_s=min_time_s, min_runs=30)).stats()
    return {"auroc": m["auroc"], "auroc_without_p13": m_without["auroc"], "auroc_any_defect": m_own["auroc"], "aupr": m["aupr"], "f1": m["f1"],
            "accuracy": m["accuracy"], "false_alarm_rate": m["false_alarm_rate"], "recall": m["recall"], "n_images": m["n"],
            "n_anomalous": m["n_anomalous"], "latency_ms_p50": stats["p50_ms"], "latency_ms_p90": stats["p90_ms"], "latency_ms_p99": stats["p99_ms"],
            "throughput_fps": 1000.0 / stats["p50_ms"]}


def classifier_auc() -> dict:
    """The supervised classifier's test ROC-AUC over the committed ELPV runs."""
    path = RESULTS / "finetune_elpv.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    aucs = [r["roc_auc"] for r in rows if isinstance(r.get("roc_auc"), float)]
    return {"runs": len(aucs), "min": min(aucs), "max": max(aucs), "mean": float(np.mean(aucs))} if aucs else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--coreset", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "anomaly_elpv")
    p.add_argument("--results", type=Path, default=RESULTS / "anomaly_elpv.json")
    p.add_argument("--smoke", action="store_true", help="tiny model on generated images: checks the script, not the numbers")
    p.add_argument("--reuse", action="store_true", help="keep WORK/fit when it is there and the build's finished stages")
    p.add_argument("--note", default="", help="how the machine was loaded during the run, written with the results")
    a = p.parse_args()

    from edgetune import api, log
    from edgetune.errors import EdgetuneError
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.files import write_json
    from edgetune.runtime.preprocess import preprocess, read_image

    log.setup()
    data, normal, model, min_time = "elpv:4class", "p0", "efficientnet_lite0", 3.0
    options = {"model": model, "img_size": a.img_size, "coreset": a.coreset}
    if a.smoke:
        a.work = a.work / "smoke"  # never next to (or over) the real runs
        data, normal, min_time = str(smoke_data(a.work, n_per_class=24)), "ok", 0.2
        options = {"model": "test_resnet", "pretrained": False, "img_size": 32, "coreset": 0.1}
        a.results = a.work / "smoke.json"
    run_dir = a.work / "fit"
    if not (a.reuse and (run_dir / "run.json").is_file()):
        run_dir = api.finetune(task="anomaly", data=data, normal=normal, out=str(run_dir), force=True, **options)
    run = load_run(run_dir)
    fit = run.info["history"][-1]["metrics"]
    try:
        bundles = api.build(["cpu", "intel"], out=a.work / "build", start=run_dir, force=not a.reuse)
    except EdgetuneError as e:  # a failed AUROC gate is a finding to measure, not the end: the bundles are written
        log.console.print(f"[yellow]{e}[/]")
        bundles = {t: a.work / "build" / f"bundle-{t}" for t in ("cpu", "intel")}

    levels_by_path = levels_of(data, normal)
    test = [path for path, _ in run.split.parts["test"]]
    levels = np.array([levels_by_path[path] for path in test])
    x = preprocess([read_image(path) for path in test], run.spec)
    rows = []
    for target, path in bundles.items():
        bundle = load_bundle(path)
        for precision in bundle.precisions:
            session = bundle.open(threads=a.threads, precision=precision)
            m = measure(session, x, levels, a.threads, min_time)
            rows.append({"dataset": "elpv", "model": f"{run.model_name} PatchCore", "stage": "ptq" if precision == "int8" else "float",
                         "runtime": session.name, "precision": precision, **m, "size_mb": bundle.artifact_size(precision) / 1e6,
                         "macs": bundle.manifest["model"].get("macs"), "bank_rows": fit["bank"]["rows"], "bank_mb": fit["bank"]["size_mb"],
                         "threads": a.threads, "machine": machine(), "date": today()})
            log.console.print(f"{target} {precision}: AUROC {m['auroc']:.4f} (without p=1/3 {m['auroc_without_p13']:.4f}), F1 {m['f1']:.4f}, "
                              f"false alarms {m['false_alarm_rate']:.2%}, {m['latency_ms_p50']:.2f} ms")
    meta = {"command": " ".join(sys.argv), "data": data, "normal": normal, "options": options, "threads": a.threads,
            "fit": {"fit_seconds": fit["fit_seconds"], "bank": fit["bank"], "threshold": fit["threshold"],
                    "test_pytorch": fit["test"]},
            "supervised_classifier_roc_auc": classifier_auc(), "machine": machine(), "date": today(),
            "note": a.note or "Compare rows of this run only."}
    write_json(a.results, {"rows": rows, **meta})
    sup = meta["supervised_classifier_roc_auc"]
    write_table(rows, COLUMNS, a.results.with_suffix(".md"), "Anomaly detection on ELPV from good cells only (PatchCore)",
                intro=(f"Fitted on {fit['bank']['images']} train cells with defect probability 0 ({options['model']}, {a.img_size} px, coreset "
                       f"{options['coreset']}): bank {fit['bank']['rows']} x {fit['bank']['dim']} ({fit['bank']['size_mb']:.1f} MB), fit "
                       f"{fit['fit_seconds']:.0f} s on {machine()}. Test split: {len(test)} cells, anomalous = p >= 0.5; threshold: "
                       f"{fit['threshold']['rule']} (validation anomalies = any p > 0). Latency: batch 1, {a.threads} threads."),
                notes=(f"Supervised classifier (finetune_elpv.py, {sup.get('runs')} runs on its own seeded split, same strata): test ROC-AUC "
                       f"{sup.get('min', float('nan')):.3f}-{sup.get('max', float('nan')):.3f}, mean {sup.get('mean', float('nan')):.3f}.\n\n"
                       "auroc: p = 1/3 cells counted normal (the classifier's labels); auroc_without_p13: those cells left out. "
                       "f1, recall, false_alarm_rate: at the bundle's threshold (normalised score 0.5). " + meta["note"]) if sup else meta["note"])
    log.console.print(f"Results: {a.results} and {a.results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
