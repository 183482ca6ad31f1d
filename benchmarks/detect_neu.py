"""Object detection on NEU-DET (hot-rolled steel, 1,800 grayscale 200x200 images,
6 defect classes, 4,189 Pascal VOC boxes): edgetune's FCOS-style detector on
efficientnet_lite0 (offline ImageNet weights), fine-tuned on a fixed seeded split
(70/15/15, stratified by the classes present; published beside the results as
detect_neu_split.json), then the whole `build` for cpu (ONNX Runtime) and intel
(OpenVINO): QAT to INT8, one export per precision, compile, evaluate.

Measured in one run on the test images, every artifact through the same session
and timing harness (edgetune.runtime.timing, batch 1, --threads): mAP@0.5 and
mAP@0.5:0.95 by pycocotools (COCO protocol), per-class AP, precision/recall/F1
at the score threshold chosen on validation; the model call's latency and end to
end (a 200x200 frame: resize, model, decoding, NMS), float and INT8 on both
runtimes, and PyTorch eager (float, the model with the graph's decoding).

The peer (detect_peer.py): YOLOv8n's network (ultralytics, random weights: only its speed is
measured) exported to ONNX at the same input size, timed by the same harness on
the same runtimes, in fp32 and in INT8 by NNCF post-training quantization of its
ONNX on the images our build calibrated on (for ONNX Runtime its activations are
then shifted to uint8 as our cpu export's are). It is installed in a virtualenv of
its own (benchmarks/work/peer-venv: ultralytics-opencv-headless, so it cannot replace
edgetune's OpenCV), never a dependency of edgetune.

    python benchmarks/detect_neu.py                 # the recipe below: about 50 min on 2 idle cores
    python benchmarks/detect_neu.py --smoke         # minutes, generated shapes: checks the script
    python benchmarks/detect_neu.py --seed 1 --no-peer --work benchmarks/work/detect_neu_seed1 \
        --results benchmarks/results/detect_neu_seed1.json   # another draw of the recipe, the same split
    python benchmarks/detect_neu.py --epochs 8 --subset 400   # a short run while developing the recipe
    python benchmarks/detect_neu.py --img-size 224 --epochs 50 --ema 0.999 --fpn-channels 64   # a longer schedule
    python benchmarks/detect_neu.py --augment hflip,vflip,rrc=0.6,brightness=0.1,contrast=0.1,mosaic=0.5   # mosaic
      # and with --qat-augment hflip,vflip,rrc=0.6,brightness=0.1,contrast=0.1 added: mosaic, QAT without it

The data set is research data, read where it lies (default ../shared/data/neu-det
next to the repository, or --data); it is never copied into the repository."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, latency_fields, machine, today, write_table  # noqa: E402
from detect_peer import PEER, peer_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "neu-det"
# The recipe (see docs/detection.md for how it was chosen and what longer runs give).
# Batch 16, not 32: the short runs learnt slowly per epoch (batch 32 at 160 px: val mAP@0.5 0.14, 0.27, 0.37,
# 0.40 after epochs 1-4; batch 16 at 192 px: 0.25, 0.38 after epochs 1-2, both of 6-epoch schedules), and on a
# CPU an epoch costs about the same per image whatever the batch: twice the steps. 128 channels with 6 QAT
# epochs: INT8 mAP@0.5 0.732-0.734 in two runs, against 0.717-0.718 with 64 and 2 (docs/detection.md).
RECIPE = {
    "model": "efficientnet_lite0",
    "img_size": 192,
    "epochs": 26,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_epochs": 1,
    "augment": "hflip,vflip,rrc=0.6,brightness=0.1,contrast=0.1",
    "fpn_channels": 128,
    "ema": 0.0,
}
# QAT at lr 3e-5: at 1e-4 the IoU-aware model's validation mAP@0.5 fell below its calibrated start (0.6904 ->
# at best 0.6895), at 3e-5 it rose to 0.7013 (test INT8 0.734-0.738 against 0.719-0.721). A second draw
# (--seed 1) gained nothing over float at 3e-5, nor the centerness model at 1e-4 (docs/detection.md).
QAT = {"epochs": 6, "batch-size": 16, "lr": 3e-5, "warmup-epochs": 0}
SPLIT = {"val_frac": 0.15, "test_frac": 0.15, "split_seed": 0}
COLUMNS = [
    "artifact",
    "runtime",
    "precision",
    "map50",
    "map50_95",
    "f1",
    "latency_ms_p50",
    "e2e_ms_p50",
    "speedup_vs_float",
    "speedup_vs_pytorch",
    "size_mb",
]


def subset_source(data: Path, work: Path, n: int) -> Path:
    """A seeded sample of `n` images of a VOC folder, linked under WORK: a short run's data."""
    images = sorted((data / "images").iterdir())
    rng = np.random.default_rng(0)
    keep = sorted(rng.choice(len(images), size=min(n, len(images)), replace=False))
    out = work / "subset"
    for sub in ("images", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in keep:
        img = images[i]
        for src, dst in (
            (img, out / "images" / img.name),
            (data / "annotations" / f"{img.stem}.xml", out / "annotations" / f"{img.stem}.xml"),
        ):
            if not dst.exists():
                dst.symlink_to(src.resolve())
    return out


def frames_and_targets(run):
    from edgetune.runtime.preprocess import read_image

    pairs = run.split.parts["test"]
    return [read_image(p) for p, _ in pairs], [t for _, t in pairs]


def measure(session, frames, targets, classes, policy) -> dict:
    """The task's metrics of a session on the frames, and its latency at batch 1:
    the model call and end to end, in alternating blocks (their difference is the
    preprocessing and decoding, not the machine's drift)."""
    from edgetune import tasks
    from edgetune.runtime.preprocess import preprocess
    from edgetune.runtime.timing import time_alternating

    results = []
    for i in range(0, len(frames), 16):
        results += session.predict_frames(frames[i : i + 16])
    m = tasks.get("detect").results_metrics(results, targets, classes)
    x = preprocess([frames[0]], session.spec)
    t = time_alternating(
        {"model": lambda: session.run_outputs(x), "e2e": lambda: session.predict_frames([frames[0]])}, policy
    )
    model, e2e = t["model"].stats(), t["e2e"].stats()
    return {
        **{k: m[k] for k in ("map50", "map50_95", "f1", "score_threshold")},
        "box_precision": m["precision"],
        "box_recall": m["recall"],
        "per_class_ap50": {c: v.get("ap50") for c, v in m["per_class"].items()},
        "per_class_ap50_95": {c: v.get("ap50_95") for c, v in m["per_class"].items()},
        "n_images": m["n"],
        **latency_fields(model),
        "e2e_ms_p50": e2e["p50_ms"],
        "e2e_ms_p99": e2e["p99_ms"],
        "inference_precision": getattr(session, "inference_precision", None),
    }


def ours(a, run, bundles: dict, policy) -> list[dict]:
    """PyTorch eager first, then each bundle's fp32 and INT8 artifact, one session alive at a time: a runtime's
    idle thread pool (ONNX Runtime's threads spin) would take the cores from the next measurement."""
    import gc

    import torch

    from edgetune.bench.torchbench import TorchSession
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle

    frames, targets = frames_and_targets(run)
    torch.set_num_threads(a.threads)
    float_run = load_run(a.work / "finetune")
    task = float_run.task_impl
    model = task.deploy_module(float_run.build_model())
    eager = task.wrap(TorchSession(model, float_run.spec, a.threads, task.session.outputs), float_run)
    row = {"artifact": "pytorch eager", "stage": "float", "runtime": "pytorch", "precision": "fp32"}
    rows = [{**row, **measure(eager, frames, targets, run.classes, policy)}]
    del eager, model
    for target, path in bundles.items():
        bundle = load_bundle(path)
        for precision in ("fp32", "int8"):
            session = bundle.open(precision=precision, threads=a.threads)
            art = bundle.artifact(precision)
            row = {"artifact": f"{target} {precision}", "stage": "float" if precision == "fp32" else "qat"}
            row.update(runtime=session.name, precision=precision, size_mb=bundle.artifact_size(precision) / 1e6)
            rows.append({**row, **measure(session, frames, targets, run.classes, policy), "file": art.get("file")})
            del session
            gc.collect()
    return rows


# --- the run -------------------------------------------------------------------------


def complete(rows: list[dict], dataset: str, model: str) -> None:
    """The shared row fields, and each row's speed against the same model's fp32 on its runtime, PyTorch eager and
    the peer (same runtime and precision)."""
    eager = next((r for r in rows if r["runtime"] == "pytorch"), None)
    for r in rows:
        r.setdefault("model", model)
        r.update(dataset=dataset, machine=machine(), date=today())
    for r in rows:
        same = [b for b in rows if b["runtime"] == r["runtime"] and b["model"] == r["model"]]
        base = next((b for b in same if b["precision"] == "fp32"), None)
        peer = next(
            (
                p
                for p in rows
                if p["stage"] == "peer" and p["runtime"] == r["runtime"] and p["precision"] == r["precision"]
            ),
            None,
        )
        r["speedup_vs_float"] = base["latency_ms_p50"] / r["latency_ms_p50"] if base else None
        r["speedup_vs_pytorch"] = eager["latency_ms_p50"] / r["latency_ms_p50"] if eager else None
        r["latency_vs_peer"] = r["latency_ms_p50"] / peer["latency_ms_p50"] if peer and r is not peer else None


def write_report(results: dict, path: Path) -> None:
    rows = results["rows"]
    classes = sorted({c for r in rows for c in (r.get("per_class_ap50") or {})})
    per_class = [
        {"artifact": r["artifact"], "runtime": r["runtime"], **{c: r["per_class_ap50"].get(c) for c in classes}}
        for r in rows
        if r.get("per_class_ap50")
    ]
    from common import markdown_table

    notes = [
        "",
        "## AP@0.5 per class",
        "",
        *markdown_table(per_class, ["artifact", "runtime", *classes]),
        "",
        f"Recipe: {json.dumps(results['recipe'])}; QAT: {json.dumps(results['qat'])}; split: "
        f"{results['split']['file']} ({results['split']['counts']}).",
        "",
        f"Peer: {results.get('peer', {}).get('how', 'not measured')}",
        "",
        f"Machine: {results['machine']}, {results['date']}. {results.get('note', '')}",
    ]
    intro = (
        "mAP by pycocotools (COCO protocol) on the test split; F1 at the score threshold chosen on validation; "
        "latency of the model call at batch 1 and end to end from a 200x200 frame (resize, model, decoding, NMS), "
        f"{results['threads']} threads, medians. speedup_vs_float: the same runtime's fp32 over this row; "
        "speedup_vs_pytorch: PyTorch eager (fp32) over this row; latency_vs_peer (JSON): this row over YOLOv8n's "
        "at the same runtime and precision."
    )
    write_table(rows, COLUMNS, path, "Object detection on NEU-DET", "\n".join(notes), intro)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model", default=RECIPE["model"], help="timm backbone (offline weights: efficientnet_lite0/1/2)")
    p.add_argument("--img-size", type=int, default=RECIPE["img_size"])
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--seed", type=int, default=0, help="the training's seed (the split's stays 0): another draw")
    p.add_argument("--ema", type=float, default=RECIPE["ema"], help="a moving average of the weights (e.g. 0.999)")
    p.add_argument("--augment", default=RECIPE["augment"], help="the fine-tuning's --augment")
    p.add_argument("--fpn-channels", type=int, default=RECIPE["fpn_channels"], help="the neck's and head's width")
    p.add_argument(
        "--layer-decay", type=float, default=1.0, help="the backbone's stages learn slower by depth (e.g. 0.75)"
    )
    p.add_argument("--qat-epochs", type=int, default=QAT["epochs"])
    p.add_argument("--qat-lr", type=float, default=QAT["lr"])
    p.add_argument("--qat-augment", default=None, help="QAT's --augment (default: the fine-tuning's)")
    p.add_argument("--subset", type=int, default=None, help="only this many images (a short run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "detect_neu")
    p.add_argument("--results", type=Path, default=RESULTS / "detect_neu.json")
    p.add_argument("--smoke", action="store_true", help="tiny model on generated shapes: checks the script")
    p.add_argument("--reuse", action="store_true", help="keep WORK/finetune and the build's finished stages")
    p.add_argument("--no-peer", action="store_true", help="leave YOLOv8n out")
    p.add_argument("--note", default="", help="how the machine was loaded during the run, written with the results")
    a = p.parse_args()

    from edgetune import api, log
    from edgetune.run import load_run
    from edgetune.runtime.files import sha256_file, write_json
    from edgetune.runtime.timing import Policy

    log.setup()
    recipe = {**RECIPE, "model": a.model, "img_size": a.img_size, "epochs": a.epochs, "ema": a.ema, "seed": a.seed}
    recipe.update(augment=a.augment, fpn_channels=a.fpn_channels)
    if a.layer_decay != 1.0:  # the shipped recipe's record stays as it was
        recipe["layer_decay"] = a.layer_decay
    qat, data = {**QAT, "epochs": a.qat_epochs, "lr": a.qat_lr}, a.data
    if a.qat_augment:
        qat["augment"] = a.qat_augment
    policy = Policy(warmup=10, min_time_s=3.0, min_runs=50)
    if a.smoke:
        from edgetune.tasks.detect.synthetic import write_voc

        a.work, a.results = a.work / "smoke", a.work / "smoke" / "smoke.json"  # never over the real runs
        data = a.work / "voc" if (a.work / "voc").is_dir() else write_voc(a.work / "voc", n=64)
        recipe = {
            **recipe,
            "model": "test_efficientnet",
            "pretrained": False,
            "img_size": 64,
            "epochs": 10,
            "batch_size": 8,
            "lr": 5e-3,
            "fpn_channels": 32,
        }
        qat = {**qat, "epochs": 1, "batch-size": 8, "lr": 1e-3}
        policy = Policy(warmup=2, min_time_s=0.2, min_runs=10)
    elif not (data / "annotations").is_dir():
        raise SystemExit(
            f"--data {data}: NEU-DET is not there. It is at ../shared/data/neu-det beside the repository on the "
            "project's machines (see ../shared/data/README.md); elsewhere download NEU-DET (images/ and annotations/, "
            "Pascal VOC) and pass --data FOLDER."
        )
    elif a.subset:
        data = subset_source(data, a.work, a.subset)
    run_dir = a.work / "finetune"
    if not (a.reuse and (run_dir / "run.json").is_file()):
        api.finetune(task="detect", data=str(data), out=str(run_dir), force=True, **recipe, **SPLIT)
    bundles = api.build(
        ["cpu", "intel"],
        out=a.work / "build",
        config={"quantize": qat},
        start=run_dir,
        force=not a.reuse,
        precision="int8",
    )
    run = load_run(a.work / "build" / "quantize")
    rows = ours(a, run, bundles, policy)
    if not a.no_peer:
        rows += peer_rows(a, run, policy)
    complete(rows, "neu-det" if not a.smoke else "shapes", recipe["model"])
    split_file = a.results.with_name(a.results.stem + "_split.json")
    # the images of each part, not their boxes: the annotations stay with the data set
    record = load_run(run_dir).split.to_dict()
    parts = {k: [p for p, _ in record[k]] for k in ("train", "val", "test")}
    write_json(split_file, {"classes": record["classes"], "seed": record["seed"], **parts})
    history = load_run(run_dir).info["history"][-1]
    results = {
        "rows": rows,
        "recipe": recipe,
        "qat": qat,
        "split": {
            "file": split_file.name,
            **SPLIT,
            "counts": {k: len(v) for k, v in load_run(run_dir).split.parts.items()},
        },
        # Which weights were measured: --reuse takes whatever WORK holds.
        "weights_sha256": {"finetune": sha256_file(run_dir / "model.pt"), "qat": sha256_file(run.dir / "model.pt")},
        "finetune_seconds": history["seconds"],
        "qat_seconds": run.info["history"][-1]["seconds"],
        "val_best_map50": history["metrics"].get("val_best"),
        "best_epoch": history["metrics"].get("best_epoch"),
        "threads": a.threads,
        "machine": machine(),
        "date": today(),
        "note": a.note,
    }
    if not a.no_peer:
        results["peer"] = {
            "how": f"{PEER}: ultralytics-opencv-headless in its own virtualenv (benchmarks/work/peer-venv), "
            f"YOLO('yolov8n.yaml') (random weights, {len(run.classes)} classes) exported to ONNX (opset 17, batch 1) "
            f"at {run.spec.size[0]}x{run.spec.size[1]}; INT8 by "
            "nncf.quantize (PERFORMANCE preset) of that ONNX on the images our build calibrated on, activations "
            "shifted to uint8 for ONNX Runtime as our cpu export; model call only (its decoding and NMS are not in "
            "the graph), timed by edgetune.runtime.timing.",
        }
    write_json(a.results, results)
    write_report(results, a.results.with_suffix(".md"))
    log.console.print(f"Results: {a.results} and {a.results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
