"""Anomaly detection on magnetic tiles (Huang et al., The Visual Computer 2020)
from good tiles only, under DifferNet's protocol (Rudolph et al., WACV 2021: image
AUROC 0.977): PatchCore fitted on the 761 MT_Free tiles DifferNet lists
(anomaly_mt_train.txt, file names only), tested on the other 191 good tiles and
all 392 defective ones. Read from ../shared/data/magnetic-tile (or --data), never
copied.

Part `bundles`: `edgetune build --target cpu --target intel` from that fit; every
artifact (fp32 and INT8 on ONNX Runtime, OpenVINO's too) on the same test tiles:
image AUROC, pixel AUROC and PRO of the heat map against the true masks, and the
batch-1 p50, timed in alternating blocks with the INT8 classifier of the same
backbone and input size (one epoch on the same tiles: latency only), so the
ratios are of one run. Part `fit-time`: fit seconds and image AUROC against the
number of good images, the bank's rows and the greedy (exact, or in rounds). Part
`backbones`: image AUROC against the backbone and its input size (what chose the
options: efficientnet_lite2 at 320 px).

    python benchmarks/anomaly_mt.py                  # every part, about an hour on 2 busy cores
    python benchmarks/anomaly_mt.py --part bundles --reuse
    python benchmarks/anomaly_mt.py --part backbones  # image AUROC against backbone and input size
    python benchmarks/anomaly_mt.py --smoke          # a few minutes, generated tiles: checks the script

The validation split (the threshold's) is 76 of the 761 train tiles: the protocol
has none. AUROC, pixel AUROC and PRO do not depend on the threshold; the false
alarms (share of good test tiles flagged) and F1 do, and are given at each
artifact's own threshold and at the float model's."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, today  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "magnetic-tile"
TRAIN_LIST = HERE / "anomaly_mt_train.txt"
NORMAL = "MT_Free"
# chosen by image AUROC on this protocol (`--part backbones`; the image-level score and the coarse patch
# features, checked on ELPV and another backbone too: docs/anomaly.md)
OPTIONS = {"model": "efficientnet_lite2", "img_size": 320, "image_score": True, "patch_features": "coarse"}
BACKBONES = [
    ("efficientnet_lite0", 224),
    ("efficientnet_lite0", 320),
    ("efficientnet_lite0", 448),
    ("efficientnet_lite2", 320),
]
SMOKE = {"model": "test_resnet", "pretrained": False, "img_size": 64}
COLUMNS = [
    "method",
    "runtime",
    "precision",
    "auroc",
    "pixel_auroc",
    "pro",
    "false_alarms",
    "false_alarms_float_threshold",
    "f1",
    "f1_float_threshold",
    "latency_ms_p50",
    "x_int8_classifier",
    "speedup_vs_fp32",
    "size_mb",
]
FIT_COLUMNS = ["images", "bank", "bank_rows", "greedy", "embed_s", "coreset_s", "fit_s", "auroc", "pixel_auroc", "pro"]


def protocol_split(data: Path, train_names: set[str], seed: int = 0):
    """DifferNet's split of the tiles, as an edgetune Split (classes: the folders)."""
    from edgetune.data.split import Split
    from edgetune.tasks.anomaly.data import mask_layout_source

    source = mask_layout_source(str(data), NORMAL)
    normal = source.classes.index(NORMAL)
    train = [(i.path, i.target) for i in source.items if i.target == normal and Path(i.path).name in train_names]
    if len(train) != len(train_names):
        raise SystemExit(f"{data}: {len(train)} of the {len(train_names)} listed {NORMAL} tiles found")
    test = [(i.path, i.target) for i in source.items if Path(i.path).name not in train_names or i.target != normal]
    val = [train[k] for k in sorted(np.random.default_rng(seed).permutation(len(train))[: len(train) // 10])]
    parts = {"train": train, "val": val, "test": test}
    return Split(str(data), source.classes, seed, parts, source.skipped, root=source.root)


def smoke_tiles(work: Path) -> tuple[Path, set[str]]:
    """Generated tiles in the MT layout (class folders, NAME.png mask beside each
    image) and a train list: checks the script, not the numbers."""
    import cv2

    rng = np.random.default_rng(0)
    root = work / "smoke_tiles"
    names = set()
    for cls, n in ((NORMAL, 40), ("MT_Crack", 10)):
        folder = root / cls / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img = (120 + rng.normal(0, 8, (48, 64))).clip(0, 255).astype(np.uint8)
            mask = np.zeros_like(img)
            if cls != NORMAL:
                y, x = rng.integers(8, 36), rng.integers(8, 50)
                mask[y : y + 6, x : x + 10] = 255
                img[mask > 0] = 30
            cv2.imwrite(str(folder / f"t{k}.jpg"), img)
            cv2.imwrite(str(folder / f"t{k}.png"), mask)
            if cls == NORMAL and k < 30:
                names.add(f"t{k}.jpg")
    return root, names


def fit(a, data: Path, train_names: set[str], options: dict) -> Path:
    from edgetune import api

    out = a.work / "fit"
    if a.reuse and (out / "run.json").is_file():
        return out
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    protocol_split(data, train_names).save(out / "split.json")  # --resume takes the split found in --out
    return api.finetune(task="anomaly", data=str(data), normal=NORMAL, out=str(out), resume=True, **options)


def classifier(a, run) -> dict[str, Path]:
    """INT8 classifier bundles of the detector's backbone and input size: one epoch
    on the same split's tiles, post-training quantization (for latency only)."""
    from edgetune import api, log
    from edgetune.errors import EdgetuneError

    out = a.work / "classifier"
    if not (a.reuse and (out / "run.json").is_file()):
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # an earlier run's classifier may have another backbone or size
        out.mkdir(parents=True)
        run.split.save(out / "split.json")
        api.finetune(
            data=run.split.source,
            out=str(out),
            resume=True,
            model=run.model_name,
            img_size=run.spec.size[0],
            epochs=1,
            **({"pretrained": False} if a.smoke else {}),
        )
    config = {"quantize": {"mode": "ptq"}, "build": {"precision": "int8", "max-drop": 100.0}}
    try:
        return api.build(["cpu", "intel"], out=a.work / "classifier-build", start=out, force=not a.reuse, config=config)
    except EdgetuneError as e:
        log.console.print(f"[yellow]{e}[/]")
        return {t: a.work / "classifier-build" / f"bundle-{t}" for t in ("cpu", "intel")}


def bundles_part(a, run) -> dict:
    """Every artifact of the cpu and intel bundles: image and pixel metrics on the
    test tiles; p50 against the INT8 classifier's, in alternating blocks."""
    from edgetune import api, log
    from edgetune.errors import EdgetuneError
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import preprocess, read_image
    from edgetune.runtime.tasks.anomaly import Normalisation
    from edgetune.runtime.timing import Policy, time_alternating
    from edgetune.tasks.anomaly.data import truth_masks
    from edgetune.tasks.anomaly.metrics import anomaly_metrics, pixel_metrics

    try:
        built = api.build(["cpu", "intel"], out=a.work / "build", start=run.dir, force=not a.reuse)
    except EdgetuneError as e:  # a failed gate is a finding to measure: the bundles are written
        log.console.print(f"[yellow]{e}[/]")
        built = {t: a.work / "build" / f"bundle-{t}" for t in ("cpu", "intel")}
    float_norm = Normalisation.from_dict(run.info["anomaly"])
    pairs = run.split.parts["test"]
    paths = [p for p, _ in pairs]
    y = np.array([folder(p) != NORMAL for p in paths])
    masks = truth_masks(paths, y, tuple(run.spec.size))
    x = preprocess([read_image(p) for p in paths], run.spec)
    sessions = {}
    for target, path in built.items():
        bundle = load_bundle(path)
        for precision in bundle.precisions:
            sessions[("PatchCore", target, precision)] = (bundle, bundle.open(threads=a.threads, precision=precision))
    for target, path in classifier(a, run).items():
        bundle = load_bundle(path)
        sessions[("classifier", target, "int8")] = (bundle, bundle.open(threads=a.threads, precision="int8"))
    calls = {k: (lambda s=s: s.run_outputs(x[:1])) for k, (_, s) in sessions.items()}
    policy = Policy(warmup=3, min_time_s=0.5 if a.smoke else 6.0, min_runs=10 if a.smoke else 60)
    p50 = {k: t.stats()["p50_ms"] for k, t in time_alternating(calls, policy, rounds=5).items()}
    rows = []
    for (method, target, precision), (bundle, s) in sessions.items():
        row = {
            "dataset": "magnetic-tile",
            "method": method,
            "model": run.model_name,
            "target": target,
            "runtime": s.name,
            "precision": precision,
            "latency_ms_p50": p50[(method, target, precision)],
            "x_int8_classifier": p50[(method, target, precision)] / p50[("classifier", target, "int8")],
            "size_mb": bundle.artifact_size(precision) / 1e6,
            "threads": a.threads,
            "machine": machine(),
            "date": today(),
        }
        if method == "PatchCore":
            if ("PatchCore", target, "fp32") in p50:
                row["speedup_vs_fp32"] = p50[("PatchCore", target, "fp32")] / row["latency_ms_p50"]
            out = [s.detect(x[i : i + 16]) for i in range(0, len(x), 16)]
            scores, maps = np.concatenate([o["score"] for o in out]), np.concatenate([o["map"] for o in out])
            own = anomaly_metrics(y, scores)  # at the artifact's own threshold (its validation scores)
            # at the float model's threshold, as bundles made before per-artifact thresholds had it
            raw = s.norm.center + (scores.astype(np.float64) - 0.5) * s.norm.scale
            at_float = anomaly_metrics(y, float_norm.apply(raw))
            row.update(
                auroc=own["auroc"],
                false_alarms=own["false_alarm_rate"],
                f1=own["f1"],
                false_alarms_float_threshold=at_float["false_alarm_rate"],
                f1_float_threshold=at_float["f1"],
                **pixel_metrics(maps, masks),
            )
            row["per_class_auroc"] = per_class_auroc(paths, scores)
        rows.append(row)
        quality = (
            f"AUROC {row['auroc']:.4f}, pixel AUROC {row['pixel_auroc']:.4f}, PRO {row['pro']:.4f}, "
            if method == "PatchCore"
            else ""
        )
        log.console.print(
            f"{method} {target} {precision}: {quality}"
            f"{row['latency_ms_p50']:.2f} ms ({row['x_int8_classifier']:.2f}x the INT8 classifier)"
        )
    record = run.info["history"][-1]["metrics"]
    search = search_record(built)
    fit = {"fit_seconds": record["fit_seconds"], "bank": record["bank"], "test_good": int((~y).sum())}
    return {"rows": rows, "fit": {**fit, "test_defective": int(y.sum())}, "search": search}


def folder(path: str) -> str:
    """The class folder of a tile (MT_<Class>/Imgs/NAME.jpg)."""
    return Path(path).parents[1].name


def per_class_auroc(paths: list[str], scores: np.ndarray) -> dict:
    """Each defect class's image AUROC against the good test tiles: which defects hide."""
    from sklearn.metrics import roc_auc_score

    names = np.array([folder(p) for p in paths])
    out = {}
    for name in sorted(set(names) - {NORMAL}):
        keep = (names == name) | (names == NORMAL)
        out[name] = float(roc_auc_score(names[keep] == name, scores[keep]))
    return out


def search_record(built: dict) -> dict | None:
    from edgetune.runtime.bundle import load_bundle

    for path in built.values():
        for rec in load_bundle(path).manifest.get("stages") or []:
            search = ((rec.get("metrics") or {}).get("fp32") or {}).get("search")
            if rec.get("stage") == "export" and search:
                return search
    return None


def fit_time_part(a, run) -> list[dict]:
    """Fit seconds and AUROC against the good images, the bank and the greedy: the
    normal train tiles embedded once (its time scaled by the images used), each
    bank chosen from the first N of a seeded order, scored on the test tiles."""
    import torch

    from edgetune import log
    from edgetune.tasks.anomaly.data import truth_masks
    from edgetune.tasks.anomaly.fit import embed_images, load_patchcore
    from edgetune.tasks.anomaly.metrics import anomaly_metrics, pixel_metrics
    from edgetune.tasks.anomaly.patchcore import greedy_coreset, rows_for_cost

    model = load_patchcore(run)
    train = [p for p, t in run.split.parts["train"]]
    pairs = run.split.parts["test"]
    y = np.array([folder(p) != NORMAL for p, _ in pairs])
    started = time.time()
    emb = embed_images(model.embedder, train, run.spec, 16, "train tiles")
    embed_s = time.time() - started
    test = embed_images(model.embedder, [p for p, _ in pairs], run.spec, 16, "test tiles")
    masks = truth_masks([p for p, _ in pairs], y, tuple(run.spec.size))
    order = np.random.default_rng(0).permutation(len(train))
    cost_rows = rows_for_cost(model)
    counts = (len(train),) if a.smoke else (190, 380, len(train))
    configs = [(n, "cost cap", 16) for n in counts]
    configs += [(len(train), "cost cap", 1), (len(train), "0.01", 16), (len(train), "0.01", 1), (len(train), "0.1", 16)]
    rows = []
    for n, bank, batch in configs:
        patches = emb[torch.from_numpy(order[:n])].permute(0, 2, 3, 1).reshape(-1, model.dim)
        want = min(cost_rows if bank == "cost cap" else int(round(float(bank) * len(patches))), len(patches))
        started = time.time()
        idx = greedy_coreset(patches, want, 0, batch=batch)
        coreset_s = time.time() - started
        model.set_bank(patches[idx])
        with torch.no_grad():
            out = [model.image_scores(model.patches.search(test[i : i + 16])) for i in range(0, len(test), 16)]
        scores = torch.cat([s for s, _ in out]).numpy()
        maps = torch.cat([m for _, m in out]).numpy()
        e = embed_s * n / len(train)
        row = {
            "images": n,
            "bank": bank,
            "bank_rows": want,
            "greedy": "exact" if batch == 1 else f"rounds of {batch}",
            "embed_s": e,
            "coreset_s": coreset_s,
            "fit_s": e + coreset_s,
            "auroc": anomaly_metrics(y, scores)["auroc"],
            **(pixel_metrics(maps, masks) if masks is not None else {}),
        }
        rows.append(row)
        log.console.print(
            f"{n} images, bank {bank} ({want} rows), {row['greedy']}: coreset {coreset_s:.1f} s, AUROC "
            f"{row['auroc']:.4f}"
        )
    return rows


def backbones_part(a, run) -> list[dict]:
    """Image AUROC against the backbone and its input size, each fitted as the build
    fits (the bank bounded by search cost, the greedy in rounds) on the same tiles
    and scored in float on the test tiles: what chose OPTIONS."""
    import timm

    from edgetune import log
    from edgetune.models.backbone import resolve_preprocess
    from edgetune.tasks.anomaly.fit import embed_images, score_images
    from edgetune.tasks.anomaly.metrics import anomaly_metrics
    from edgetune.tasks.anomaly.patchcore import build_patchcore, greedy_coreset, rows_for_cost

    train = [p for p, _ in run.split.parts["train"]]
    paths = [p for p, _ in run.split.parts["test"]]
    y = np.array([folder(p) != NORMAL for p in paths])
    rows = []
    for name, size in [(SMOKE["model"], 64)] if a.smoke else BACKBONES:
        spec = resolve_preprocess(timm.create_model(name, pretrained=False), size)
        model = build_patchcore(name, tuple(spec.size), pretrained=not a.smoke, features=OPTIONS["patch_features"])
        started = time.time()
        emb = embed_images(model.embedder, train, spec, 16, f"{name} at {size} px")
        patches = emb.permute(0, 2, 3, 1).reshape(-1, model.dim)
        del emb
        want = rows_for_cost(model)
        model.set_bank(patches[greedy_coreset(patches, min(want, len(patches)), 0)])
        fit_s = time.time() - started
        scores, _ = score_images(model, paths, spec, 16, "test tiles")
        row = {"model": name, "img_size": size, "bank_rows": want, "fit_s": fit_s}
        row.update(auroc=anomaly_metrics(y, scores)["auroc"], **per_class_auroc(paths, scores))
        rows.append(row)
        log.console.print(f"{name} at {size} px: AUROC {row['auroc']:.4f}, fit {fit_s:.0f} s")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["bundles", "fit-time", "backbones", "all"], default="all")
    p.add_argument("--data", type=Path, default=DATA, help="the magnetic-tile folder (MT_<Class>/Imgs/)")
    p.add_argument("--model", default=OPTIONS["model"])
    p.add_argument("--img-size", type=int, default=OPTIONS["img_size"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=HERE / "work" / "anomaly_mt")
    p.add_argument("--results", type=Path, default=RESULTS / "anomaly_mt.json")
    p.add_argument("--smoke", action="store_true", help="tiny model on generated tiles: checks the script")
    p.add_argument("--reuse", action="store_true", help="keep WORK's fit and the builds' finished stages")
    p.add_argument("--note", default="", help="how the machine was loaded during the run, written with the results")
    a = p.parse_args()

    from edgetune import log
    from edgetune.run import load_run
    from edgetune.runtime.files import read_json, write_json

    log.setup()
    options = {**OPTIONS, "model": a.model, "img_size": a.img_size}
    data, names = a.data, set(TRAIN_LIST.read_text().split())
    if a.smoke:
        a.work = a.work / "smoke"  # never next to (or over) the real runs
        a.results = a.work / "smoke.json"
        data, names = smoke_tiles(a.work)
        options = SMOKE
    elif not (data / NORMAL).is_dir():
        raise SystemExit(f"--data {data}: no {NORMAL}/ folder; give the magnetic-tile data set's folder")
    run = load_run(fit(a, data, names, options))
    results = read_json(a.results) if a.results.is_file() and a.part != "all" else {}
    # each part keeps the options, machine and note of the run that measured it
    header = {"options": options, "command": " ".join(sys.argv), "machine": machine(), "date": today(), "note": a.note}
    if a.part in ("bundles", "all"):
        results.update(header, **bundles_part(a, run))
    if a.part in ("fit-time", "all"):
        results["fit_time"] = fit_time_part(a, run)
        results["fit_time_run"] = header
    if a.part in ("backbones", "all"):
        results["backbones"] = backbones_part(a, run)
        results["backbones_run"] = header
    write_json(a.results, results)
    write_report(results, a.results.with_suffix(".md"))
    log.console.print(f"Results: {a.results} and {a.results.with_suffix('.md')}")


def measured_on(run: dict) -> str:
    """Where and when a part was measured, with its note: parts may run apart."""
    if not run:
        return ""
    note = f" {run['note']}" if run.get("note") else ""
    return f"Measured on {run['machine']}, {run['date']}.{note} "


def write_report(results: dict, path: Path) -> None:
    from edgetune.runtime.files import write_text

    o, fit = results.get("options") or {}, results.get("fit") or {}
    bank = fit.get("bank") or {}
    lines = ["# Anomaly detection on magnetic tiles from good tiles only (PatchCore, DifferNet's protocol)", ""]
    if results.get("rows"):  # the bundles part (another part may have run alone)
        lines += [
            f"Fitted on the {bank.get('images', 761)} MT_Free tiles DifferNet lists ({o['model']}, {o['img_size']} "
            f"px{', --image-score' if o.get('image_score') else ''}"
            f"{', --patch-features ' + o['patch_features'] if o.get('patch_features') else ''}): "
            f"bank {bank.get('rows')} x {bank.get('dim')} ({bank.get('bounded_by')}), fit {fit.get('fit_seconds')} s. "
            f"Tested on the other {fit.get('test_good')} good tiles and the {fit.get('test_defective')} defective "
            f"ones. DifferNet (WACV 2021) reports image AUROC 0.977. Measured on {results['machine']}, "
            f"{results['date']}; batch 1, 2 threads, every latency timed in alternating blocks in one run. "
            "x_int8_classifier: p50 over that of the INT8 classifier with the same backbone and input size on the "
            "same runtime. false_alarms, f1: at the artifact's own threshold (chosen on its validation scores); "
            "*_float_threshold: at the float model's.",
            "",
            *markdown_table(results["rows"], COLUMNS),
            "",
        ]
    search = results.get("search")
    if search:
        lines += [
            f"The bank search ({search['rows']} rows) takes {100 * search['share']:.0f}% of the fp32 graph's p50 on "
            f"ONNX Runtime ({search['fp32_ms_p50']:.2f} ms; {search['without_ms_p50']:.2f} ms with a one-row bank), "
            "as the build measured it.",
            "",
        ]
    per_class = next((r.get("per_class_auroc") for r in results.get("rows", []) if r.get("per_class_auroc")), None)
    if per_class:
        lines += [
            "Image AUROC per defect class (against the good test tiles, the first row's artifact): "
            + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items())
            + ".",
            "",
        ]
    if results.get("fit_time"):
        fit_run = results.get("fit_time_run") or {}
        fit_o = fit_run.get("options") or {"model": "efficientnet_lite0", "img_size": 224}
        lines += [
            "## Fit time",
            "",
            f"{fit_o['model']} at {fit_o['img_size']} px"
            + (" (a run of its own, with these options, not those above). " if o and fit_o != o else ". ")
            + measured_on(fit_run)
            + "The patch score alone (the image-level score's bank is one row per good tile, and its fit takes "
            "seconds). Seconds to fit (embedding the good tiles + choosing the bank) and the test AUROC, against the "
            "good tiles used (a seeded subset), the bank (cost cap: the rows whose search costs what the embedder "
            "costs; a fraction of the patches) and the greedy k-center (exact: one pass over the patches a pick; "
            "rounds: a pass per up to 16 picks, the same bank).",
            "",
            *markdown_table(results["fit_time"], FIT_COLUMNS),
            "",
        ]
    if results.get("backbones"):
        classes = sorted(k for k in results["backbones"][0] if k.startswith("MT_"))
        lines += [
            "## Backbone and input size",
            "",
            (
                "Each fitted as the build fits (the bank bounded by search cost, the greedy's own picks in rounds) "
                "on the same good tiles, image AUROC of the float model's patch score alone (without the image-level "
                "score) on the test tiles, overall and per defect class (`--part backbones`). "
                + measured_on(results.get("backbones_run") or {})
            ).rstrip(),
            "",
            *markdown_table(results["backbones"], ["model", "img_size", "bank_rows", "fit_s", "auroc", *classes]),
            "",
        ]
    if results.get("rows") and results.get("note"):
        lines += [results["note"], ""]
    write_text(path, "\n".join(lines))


if __name__ == "__main__":
    main()
