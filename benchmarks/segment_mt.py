"""Semantic segmentation of magnetic-tile surface defects (Huang et al., The
Visual Computer 2020): efficientnet_lite0 (offline ImageNet weights) with the FPN
decoder, fine-tuned on a fixed seeded split (seed 0, 60/15/25 stratified by the
rarest class an image shows; published in results/segment_mt_split.json), then
the whole `build` for cpu (ONNX Runtime) and intel (OpenVINO): QAT INT8 and the
float export, every artifact measured on the same test images: mIoU with and
without background, per-class IoU, image-level AUROC and F1 and region recall
(the line's view), batch-1 latency of the model call and end to end (decoding and
the mask mapped back onto the frame included), against PyTorch eager, alternated
in one run. DEU-Net (Applied Sciences 2024) reports mIoU 66.94 on this data.

Beside it, the anomaly task on the same split (`--task anomaly --normal
background`: PatchCore fitted on the defect-free training tiles only): image
AUROC against "has a defect pixel", and pixel AUROC of its heat map against the
masks, next to the segmentation model's own pixel AUROC (1 - p(background)).

    python benchmarks/segment_mt.py                   # the full recipe, about 70 min on 2 idle cores
    python benchmarks/segment_mt.py --smoke           # a few minutes, generated tiles: checks the script
    python benchmarks/segment_mt.py --part anomaly --reuse   # the anomaly columns only, on the same split"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, latency_fields, machine, markdown_table, today  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "magnetic-tile"
# The recipe: chosen with short runs on the 2-core machine (see docs/segmentation.md).
RECIPE = {
    "model": "efficientnet_lite0",
    "img_size": 320,
    "epochs": 20,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_epochs": 0.5,
    "label_smoothing": 0.0,
    "balance": "sampler",  # rare classes' images drawn more often, Dice kept
    "augment": "hflip,vflip,brightness=0.1,contrast=0.1",
    "workers": 1,  # augmentation in a worker: one torch thread there, not two contending with training
    "min_area": 16,
}
QUANTIZE = {"epochs": 2, "batch-size": 16, "lr": 2e-4, "label-smoothing": 0.0, "balance": "sampler", "workers": 1}
ANOMALY = {"model": "efficientnet_lite0", "img_size": 256, "coreset": 0.01}
SMOKE = {"model": "test_efficientnet", "pretrained": False, "img_size": 64, "epochs": 3, "batch_size": 8, "lr": 5e-3}
COLUMNS = [
    "stage",
    "runtime",
    "precision",
    "miou",
    "miou_defects",
    "image_auroc",
    "image_f1",
    "region_recall",
    "latency_ms_p50",
    "e2e_ms_p50",
    "speedup_vs_fp32",
    "speedup_vs_pytorch",
    "size_mb",
]


def finetune(a, data: str, options: dict) -> Path:
    from edgetune import api

    run = a.work / "finetune"
    if a.reuse and (run / "run.json").is_file():
        return run
    return api.finetune(task="segment", data=data, out=str(run), force=True, **options)


def publish_split(run, path: Path) -> None:
    """The split's images (paths relative to the data folder), for others to rerun on."""
    from edgetune.runtime.files import write_json

    record = run.split.to_dict()
    write_json(path, {k: record[k] for k in ("source", "classes", "seed", "train", "val", "test")})


def build(a, run) -> dict:
    from edgetune import api, log
    from edgetune.errors import EdgetuneError

    quantize = {**QUANTIZE, **({"epochs": 1, "batch-size": 8} if a.smoke else {})}
    try:
        return api.build(
            ["cpu", "intel"], out=a.work / "build", start=run.dir, force=not a.reuse, config={"quantize": quantize}
        )
    except EdgetuneError as e:  # a failed gate is a finding to measure: the bundles are written
        log.console.print(f"[yellow]{e}[/]")
        return {t: a.work / "build" / f"bundle-{t}" for t in ("cpu", "intel")}


def segmentation_rows(a, run, bundles: dict) -> list[dict]:
    """Every artifact of both bundles and PyTorch eager: metrics on the test split,
    latencies timed in alternating blocks (one run, so their ratios mean something)."""
    from edgetune.bench.artifacts import session_results
    from edgetune.bench.torchbench import TorchSession
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import preprocess, read_image
    from edgetune.runtime.timing import Policy, time_alternating

    task, pairs = run.task_impl, run.split.parts["test"]
    paths, targets = [p for p, _ in pairs], [y for _, y in pairs]
    frame = read_image(sorted(paths, key=lambda p: read_image(p).size)[len(paths) // 2])  # a median-size tile
    x1 = preprocess([frame], run.spec)
    sessions, rows = {}, []
    torch_model = task.deploy_module(run.build_model())
    sessions[("pytorch", "fp32")] = task.wrap(TorchSession(torch_model, run.spec, a.threads, task.session.outputs), run)
    for target, path in bundles.items():
        bundle = load_bundle(path)
        for precision in bundle.precisions:
            sessions[(target, precision)] = bundle.open(threads=a.threads, precision=precision)
    calls = {}
    for key, s in sessions.items():
        calls[(key, "model")] = lambda s=s: s.run_outputs(x1)
        calls[(key, "e2e")] = lambda s=s: s.predict_frames([frame])
    policy = Policy(warmup=3, min_time_s=0.5 if a.smoke else 8.0, min_runs=10 if a.smoke else 60)
    timings = {k: t.stats() for k, t in time_alternating(calls, policy, rounds=5).items()}
    for (target, precision), s in sessions.items():
        if target == "pytorch":
            results = task.results(run.build_model(), pairs, run.spec, run.classes, a.min_area)
            size, stage = (run.dir / "model.pt").stat().st_size, "float"
        else:
            results = session_results(s, paths, desc=f"{target} {precision}")
            bundle = load_bundle(bundles[target])
            size, stage = bundle.artifact_size(precision), "qat" if precision == "int8" else "float"
        m = task.results_metrics(results, targets, run.classes)
        model, e2e = timings[((target, precision), "model")], timings[((target, precision), "e2e")]
        rows.append(
            {
                "dataset": "magnetic-tile",
                "model": f"{run.model_name} FPN",
                "stage": stage,
                "target": target,
                "runtime": s.name,
                "precision": precision,
                **{k: m[k] for k in ("miou", "miou_defects", "pixel_accuracy", "image_auroc", "image_f1")},
                "region_recall": m["region_recall"],
                "per_class_iou": {c: v["iou"] for c, v in m["per_class"].items()},
                **latency_fields(model),
                "e2e_ms_p50": e2e["p50_ms"],
                "size_mb": size / 1e6,
                "n_images": m["n"],
                "threads": a.threads,
                "machine": machine(),
                "date": today(),
            }
        )
    torch_ms = rows[0]["latency_ms_p50"]
    for r in rows:
        fp32 = next((o for o in rows if o["target"] == r["target"] and o["precision"] == "fp32"), r)
        r["speedup_vs_fp32"] = fp32["latency_ms_p50"] / r["latency_ms_p50"]
        r["speedup_vs_pytorch"] = torch_ms / r["latency_ms_p50"]
    return rows


def anomaly(a, run, data: str) -> dict:
    """PatchCore fitted on the defect-free train tiles of the same split; image and
    pixel AUROC on the same test tiles, beside the segmentation model's."""
    from edgetune import api, log
    from edgetune.errors import EdgetuneError
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle

    out = a.work / "anomaly"
    options = {"model": "test_resnet", "pretrained": False, "img_size": 64, "coreset": 0.1} if a.smoke else ANOMALY
    if not (a.reuse and (out / "run.json").is_file()):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        split = run.split.to_dict()  # the same images; each labelled by its folder's class (background: defect-free)
        for part in ("train", "val", "test"):
            split[part] = [[p, int(y["class"] or 0)] for p, y in split[part]]
        from edgetune.runtime.files import write_json

        write_json(out / "split.json", split)
        api.finetune(task="anomaly", data=data, normal=run.classes[0], out=str(out), resume=True, **options)
    arun = load_run(out)
    try:
        bundles = api.build(["cpu"], out=a.work / "anomaly-build", start=arun.dir, force=not a.reuse)
    except EdgetuneError as e:
        log.console.print(f"[yellow]{e}[/]")
        bundles = {"cpu": a.work / "anomaly-build" / "bundle-cpu"}
    pairs = run.split.parts["test"]
    truth_masks = test_masks(run, pairs, tuple(arun.spec.size))
    rows = []
    bundle = load_bundle(bundles["cpu"])
    for precision in bundle.precisions:
        session = bundle.open(threads=a.threads, precision=precision)
        scores, maps = detect(session, [p for p, _ in pairs], arun.spec)
        rows.append(
            {
                "method": f"anomaly (PatchCore, {arun.model_name}, defect-free train tiles only)",
                "runtime": session.name,
                "precision": precision,
                **aurocs(scores, maps, truth_masks),
                "train_images": arun.info["history"][-1]["metrics"]["bank"]["images"],
            }
        )
    probs, seg_scores = segment_probabilities(run, pairs, tuple(arun.spec.size))
    seg = {"method": f"segmentation ({run.model_name} FPN, masks of every class)", "runtime": "pytorch"}
    rows.insert(0, {**seg, "precision": "fp32", **aurocs(seg_scores, probs, truth_masks)})
    rows[0]["train_images"] = len(run.split.parts["train"])
    return {"rows": rows, "options": options, "map_size": list(arun.spec.size)}


def test_masks(run, pairs, size) -> np.ndarray:
    """Each test image's true defect mask (any class) at `size`, by nearest neighbour."""
    import cv2

    from edgetune.data.masks import read_label
    from edgetune.runtime.preprocess import read_image

    h, w = size
    out = []
    for path, target in pairs:
        label = read_label(target, read_image(path).shape[:2])
        out.append(cv2.resize((label > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST))
    return np.stack(out).astype(bool)


def detect(session, paths: list[str], spec) -> tuple[np.ndarray, np.ndarray]:
    from edgetune.runtime.preprocess import preprocess, read_image

    scores, maps = [], []
    for i in range(0, len(paths), 8):
        out = session.detect(preprocess([read_image(p) for p in paths[i : i + 8]], spec))
        scores.append(out["score"])
        maps.append(out["map"])
    return np.concatenate(scores), np.concatenate(maps)


def segment_probabilities(run, pairs, size) -> tuple[np.ndarray, np.ndarray]:
    """The float segmentation model's 1 - p(background) per pixel at `size`, and its defect scores."""
    import torch
    from torch.nn import functional as F

    from edgetune.data.transforms import load_rgb, normalize

    model = run.build_model().eval()
    maps, scores = [], []
    with torch.no_grad():
        for i in range(0, len(pairs), 8):
            x = torch.stack([normalize(load_rgb(p), run.spec) for p, _ in pairs[i : i + 8]])
            defect = 1 - torch.softmax(model(x), dim=1)[:, :1]
            scores.append(defect.flatten(1).amax(1).numpy())
            maps.append(F.interpolate(defect, size=size, mode="bilinear", align_corners=False)[:, 0].numpy())
    return np.concatenate(maps), np.concatenate(scores)


def aurocs(scores: np.ndarray, maps: np.ndarray, truth: np.ndarray) -> dict:
    """Image AUROC against "has a defect pixel"; pixel AUROC and PRO as the anomaly task computes them."""
    from sklearn.metrics import roc_auc_score

    from edgetune.tasks.anomaly.metrics import pixel_metrics

    defective = truth.reshape(len(truth), -1).any(1)
    pixels = pixel_metrics(maps, truth)
    return {
        "image_auroc": float(roc_auc_score(defective, scores)) if 0 < defective.sum() < len(defective) else None,
        "pixel_auroc": pixels["pixel_auroc"],
        "pro": pixels["pro"],
        "test_images": int(len(truth)),
        "defective_test_images": int(defective.sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="the magnetic-tile folder (MT_<Class>/Imgs/NAME.jpg + NAME.png)")
    p.add_argument("--part", choices=["segment", "anomaly", "all"], default="all")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--img-size", type=int, default=RECIPE["img_size"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "segment_mt")
    p.add_argument("--results", type=Path, default=RESULTS / "segment_mt.json")
    p.add_argument("--smoke", action="store_true", help="a tiny model on generated tiles: checks the script")
    p.add_argument("--reuse", action="store_true", help="keep a finished fine-tune and the build's finished stages")
    p.add_argument("--note", default="", help="how the machine was loaded during the run, written with the results")
    a = p.parse_args()

    from edgetune import log
    from edgetune.run import load_run
    from edgetune.runtime.files import read_json, write_json

    log.setup()
    options = {**RECIPE, "epochs": a.epochs, "img_size": a.img_size}
    data, split_file = a.data, RESULTS / "segment_mt_split.json"
    if a.smoke:
        from edgetune.data.synthetic import make_masked_images

        a.work = a.work / "smoke"  # never next to (or over) the real runs
        data = str(make_masked_images(a.work / "smoke_data", n=20))
        options = {**options, **SMOKE}
        a.results, split_file = a.work / "smoke.json", a.work / "smoke_split.json"
    elif not Path(data).is_dir():
        raise SystemExit(
            f"{data}: no magnetic-tile data. Give --data (the folder with MT_Blowhole/ ... MT_Uneven/), see "
            "../shared/data/README.md."
        )
    a.min_area = options["min_area"]
    run = load_run(finetune(a, data, options))
    publish_split(run, split_file)
    results = read_json(a.results) if a.results.is_file() and a.part != "all" else {}
    if a.part in ("segment", "all"):
        rows = segmentation_rows(a, run, build(a, run))
        results.update(
            rows=rows,
            command=" ".join(sys.argv),
            recipe=options,
            quantize=QUANTIZE,
            split=str(split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file),
            fit=run.info["history"][0]["metrics"],
            machine=machine(),
            date=today(),
            note=a.note or "Compare rows of this run only.",
        )
    if a.part in ("anomaly", "all"):
        results["anomaly"] = {**anomaly(a, run, data), "machine": machine(), "date": today()}
    write_json(a.results, results)
    write_report(results, run.classes, a.results.with_suffix(".md"))
    log.console.print(f"Results: {a.results} and {a.results.with_suffix('.md')}")


def write_report(results: dict, classes: list[str], path: Path) -> None:
    from edgetune.runtime.files import write_text

    r = results.get("recipe", {})
    fit = results.get("fit", {})
    train_min = sum(e.get("train_seconds", 0) for e in fit.get("epochs", [])) / 60
    per_class = [
        {"runtime": row["runtime"], "precision": row["precision"], **row["per_class_iou"]}
        for row in results.get("rows", [])
    ]
    lines = [
        "# Semantic segmentation of magnetic-tile defects",
        "",
        f"{r.get('model')} + FPN decoder at {r.get('img_size')} px (the whole tile resized), {r.get('epochs')} epochs "
        f"(lr {r.get('lr')}, batch {r.get('batch_size')}, cross-entropy + Dice"
        + (", rare classes' images drawn more often (`--balance sampler`)" if r.get("balance") == "sampler" else "")
        + "), then QAT "
        f"{QUANTIZE['epochs']} epochs; split `{results.get('split')}` (seed 0, 60/15/25); test metrics on "
        f"{results['rows'][0]['n_images'] if results.get('rows') else '?'} tiles at their own size; latency batch 1, "
        f"{results['rows'][0]['threads'] if results.get('rows') else '?'} threads, alternated in one run on "
        f"{results.get('machine')}, {results.get('date')}. Fine-tuning took {train_min:.0f} min "
        "of training steps. DEU-Net (Applied Sciences 2024): mIoU 0.6694.",
        "",
        *markdown_table(results.get("rows", []), COLUMNS),
        "",
        "## Per-class IoU",
        "",
        *markdown_table(per_class, ["runtime", "precision", *classes]),
        "",
        f"miou: mean IoU over the {len(classes)} classes with background; miou_defects: over the {len(classes) - 1} "
        "defect classes; image "
        "AUROC ranks tiles by defect_score against 'has a defect pixel'; image F1 and region recall count "
        f"predicted regions of at least {r.get('min_area')} px. {results.get('note', '')}",
        "",
    ]
    anomaly = results.get("anomaly")
    if anomaly:
        lines += [
            "## Learning from good tiles only (anomaly) against learning from masks",
            "",
            f"The same split and test tiles; PatchCore ({anomaly['options']}) fitted on the train split's "
            f"defect-free tiles; pixel AUROC at {anomaly['map_size']} px against the masks (any defect class).",
            "",
            *markdown_table(
                anomaly["rows"], ["method", "runtime", "precision", "image_auroc", "pixel_auroc", "pro", "train_images"]
            ),
            "",
        ]
    write_text(path, "\n".join(lines))


if __name__ == "__main__":
    main()
