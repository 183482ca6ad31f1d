"""Fitting PatchCore on the normal images of a split: patch embeddings of the
train split's normal images -> greedy coreset (the memory bank, bounded in MB) ->
threshold and normalisation on the validation split; scoring; restoring a fitted
run's module. `fit_patchcore` is the task's fit (the finetune stage writes the run).

Only the normal class of the train split is ever seen while fitting; labelled
anomalies in train are not used. Validation anomalies, where there are some,
choose the threshold (F1-optimal); otherwise a quantile of the normal scores."""

from __future__ import annotations

import time

import numpy as np
import torch

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime.tasks.anomaly import CLASSES, Normalisation

logger = log.get(__name__)
MIN_NORMAL = 10
DEFAULTS = {
    "bank_rows": None,
    "coreset": 0.1,
    "max_bank_mb": 256.0,
    "max_false_alarm": 0.01,
    "batch_size": 16,
    "image_score": False,
    "patch_features": "fine",
}


def normal_index(classes: list[str], normal: str | None, source: str) -> int:
    if not normal and len(classes) == 1:
        return 0  # good parts alone: they are the normal class
    if not normal:
        raise EdgetuneError(
            f"--task anomaly needs --normal CLASS: the class of good parts to fit on. Classes in {source}: "
            f"{', '.join(classes)}."
        )
    if normal not in classes:
        raise EdgetuneError(f"--normal {normal}: no such class in {source}. Its classes are: {', '.join(classes)}.")
    return classes.index(normal)


def anomalous_labels(pairs: list[tuple[str, int]], normal: int = 0) -> np.ndarray:
    return np.array([y != normal for _, y in pairs], dtype=bool)


@torch.no_grad()
def embed_images(embedder, paths: list[str], spec, batch_size: int = 16, desc: str = "", with_image: bool = False):
    """(images, D, h, w) patch embeddings of `paths`, preprocessed as in training;
    `with_image`: and their (images, E) image embeddings."""
    from edgetune.data.dataset import eval_loader
    from edgetune.data.transforms import EvalTransform

    patches, images = [], []
    with log.progress(desc or "embedding", total=len(paths)) as advance:
        for x, _ in eval_loader([(p, 0) for p in paths], EvalTransform(spec), batch_size):
            p, i = embedder.embed(x)
            patches.append(p)
            images.append(i)
            advance(len(x))
    return (torch.cat(patches), torch.cat(images)) if with_image else torch.cat(patches)


@torch.no_grad()
def score_images(model, paths: list[str], spec, batch_size: int = 16, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Raw (scores (N,), maps (N, H, W)) of a PatchCore module on image files."""
    from edgetune.data.dataset import eval_loader
    from edgetune.data.transforms import EvalTransform

    scores, maps = [], []
    with log.progress(desc or "scoring", total=len(paths)) as advance:
        for x, _ in eval_loader([(p, 0) for p in paths], EvalTransform(spec), batch_size):
            s, m = model(x)
            scores.append(s.numpy())
            maps.append(m.numpy())
            advance(len(x))
    return np.concatenate(scores), np.concatenate(maps)


def bank_rows(model, images: int, coreset: float, rows: int | None) -> tuple[int, str]:
    """(rows, what bounds them): --bank-rows when given, else the coreset fraction
    of the patches, capped where the search would cost more than the embedder."""
    from edgetune.tasks.anomaly.patchcore import rows_for_cost

    patches = images * model.grid[0] * model.grid[1]
    if rows:
        return min(int(rows), patches), "--bank-rows"
    by_fraction, by_cost = max(1, int(round(patches * coreset))), rows_for_cost(model)
    return (by_fraction, "--coreset") if by_fraction <= by_cost else (by_cost, "search cost")


def fit_bank(
    model, paths: list[str], spec, coreset: float, max_bank_mb: float, seed: int, batch_size: int, rows=None
) -> dict:
    """Fill `model`'s memory bank from the normal images at `paths`; returns its record."""
    from edgetune.tasks.anomaly.patchcore import bank_mb, greedy_coreset

    if not 0 < coreset <= 1:
        raise EdgetuneError(
            f"--coreset {coreset}: give the fraction of patch features to keep, in (0, 1] (0.1 keeps one in ten)."
        )
    (h, w), dim, n = model.grid, model.dim, len(paths)  # the bank's size, before embedding every image
    rows, bound = bank_rows(model, n, coreset, rows)
    size_mb = bank_mb(rows, dim)
    if size_mb > max_bank_mb:
        raise EdgetuneError(
            f"The memory bank would hold {rows} patch features of {dim} values ({n} images x {h}x{w} patches, "
            f"bounded by {bound}): {size_mb:.1f} MB, over --max-bank-mb {max_bank_mb:g}. Lower "
            + (f"--coreset (e.g. {coreset * max_bank_mb / size_mb / 1.05:.3g})" if bound == "--coreset" else "")
            + (f"--bank-rows (e.g. {int(rows * max_bank_mb / size_mb / 1.05)})" if bound != "--coreset" else "")
            + f" or --img-size (now {spec.size[0]}; the patch grid shrinks with its square), or raise --max-bank-mb."
        )
    logger.info(
        "Memory bank: %d rows of %d values (%.1f MB), bounded by %s; the search takes %.2f GMAC a frame.",
        rows,
        dim,
        size_mb,
        bound,
        h * w * rows * dim / 1e9,
    )
    with_image = model.image_search is not None
    emb = embed_images(model.embedder, paths, spec, batch_size, "features of normal images", with_image)
    emb, images = emb if with_image else (emb, None)
    patches = emb.permute(0, 2, 3, 1).reshape(-1, dim)
    started = time.time()
    with log.progress(f"coreset: {rows} of {len(patches)} patches", total=rows) as advance:
        last = [0]

        def step(i):
            advance(i - last[0])
            last[0] = i

        idx = greedy_coreset(patches, rows, seed, step)
    model.set_bank(patches[idx])
    image = fit_image_bank(model, emb, images, idx, seed) if with_image else None
    return {
        "rows": rows,
        "dim": dim,
        "size_mb": round(size_mb, 3),
        "patches": int(len(patches)),
        "images": n,
        "grid": [h, w],
        "coreset": coreset,
        "bounded_by": bound,
        "search_gmac": round(h * w * rows * dim / 1e9, 4),
        "coreset_seconds": round(time.time() - started, 1),
        **({"image": image} if image else {}),
    }


MAX_IMAGE_ROWS = 4096  # the image bank's rows: a greedy coreset of the normal images beyond this
SPREAD_IMAGES = 64  # normal images whose leave-one-out scores measure each distance's spread


@torch.no_grad()
def fit_image_bank(model, emb: torch.Tensor, images: torch.Tensor, bank_idx: torch.Tensor, seed: int) -> dict:
    """The image-level score's bank and weights, from the normal images' patch
    embeddings `emb` (N, D, h, w), image embeddings `images` (N, E) and the patch
    bank's rows (`bank_idx` into the N*h*w patches).

    Each image dimension is divided by its spread over the normal images. The
    patch and image distances are then weighted by 1 / their own spread over
    normal images, estimated leave-one-image-out on a sample: an image's patch
    distance to the bank rows of the other images, its image distance to the other
    images' embeddings (in the bank, a normal image finds itself at distance 0)."""
    from edgetune.tasks.anomaly.patchcore import greedy_coreset

    n = len(images)
    sd = images.std(0, unbiased=False)
    scale = 1 / sd.clamp_min(1e-2 * float(sd.mean()) + 1e-12)  # a channel constant on good parts must not explode
    z = images * scale
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:SPREAD_IMAGES]
    own = torch.cdist(z[sample], z)
    own[torch.arange(len(sample)), sample] = float("inf")
    image_d = own.amin(1)
    hw = emb.shape[2] * emb.shape[3]
    owner = bank_idx // hw
    bank = model.patches.search.bank
    patch_d = []
    for i in sample.tolist():
        others = bank[owner != i]
        if not len(others):
            continue
        q = emb[i].flatten(1).T
        patch_d.append(float(torch.cdist(q, others).amin(1).amax()))
    spreads = [float(torch.tensor(patch_d).std()) if len(patch_d) > 1 else 0.0, float(image_d.std())]
    weights = tuple(1 / v if v > 1e-12 else 1.0 for v in spreads)
    rows = z if n <= MAX_IMAGE_ROWS else z[greedy_coreset(z, MAX_IMAGE_ROWS, seed, batch=16)]
    model.set_image_bank(rows, scale, weights)
    logger.info(
        "Image score: %d normal image embeddings of %d values; patch and image distances weighted by 1/%.4g and "
        "1/%.4g (their spread over %d normal images, each left out of the banks).",
        len(rows),
        z.shape[1],
        *spreads,
        len(sample),
    )
    return {"rows": len(rows), "dim": int(z.shape[1]), "weights": [round(w, 6) for w in weights], "spreads": spreads}


def calibrate(
    model, split, spec, normal_class: str, max_false_alarm: float, batch_size: int
) -> tuple[Normalisation, dict]:
    """Threshold + normalisation from the (binary) validation split's raw scores."""
    from edgetune.tasks.anomaly.metrics import anomaly_threshold

    val = split.parts["val"]
    y = anomalous_labels(val)
    if (~y).sum() == 0:
        raise EdgetuneError(
            f"The validation split holds no '{normal_class}' images to set the threshold on; give more data or a "
            "larger --val-frac."
        )
    if not 0 < max_false_alarm < 1:
        raise EdgetuneError(
            f"--max-false-alarm {max_false_alarm}: give the share of normal images allowed to raise an alarm, in (0, "
            "1) (0.01 = 1%)."
        )
    scores, _ = score_images(model, [p for p, _ in val], spec, batch_size, "validation scores")
    threshold, rule = anomaly_threshold(y, scores, max_false_alarm)
    norm = Normalisation.from_scores(threshold, scores, spec.size, rule, normal_class)
    return norm, {"val_scores_raw": {"min": float(scores.min()), "max": float(scores.max())}}


def evaluate_split(model, split, spec, norm: Normalisation, part: str = "test", batch_size: int = 16) -> dict:
    """Image metrics of `part`; pixel AUROC and PRO too where its images have masks."""
    from edgetune.tasks.anomaly.data import truth_masks
    from edgetune.tasks.anomaly.metrics import anomaly_metrics, pixel_metrics

    pairs = split.parts[part]
    paths, y = [p for p, _ in pairs], anomalous_labels(pairs)
    scores, maps = score_images(model, paths, spec, batch_size, f"{part} scores")
    metrics = anomaly_metrics(y, norm.apply(scores))
    masks = truth_masks(paths, y, tuple(spec.size))
    return {**metrics, **(pixel_metrics(maps, masks) if masks is not None else {})}


def load_patchcore(run):
    """A fitted anomaly run's PatchCore module, rebuilt from its records (weights_only)."""
    from edgetune.tasks.anomaly.patchcore import build_patchcore, upgrade_state

    info = run.info.get("anomaly") or {}
    bank = info.get("bank") or {}
    image = bank.get("image")  # absent in runs fitted before the image score: the patch score alone
    model = build_patchcore(
        run.model_name,
        tuple(run.spec.size),
        pretrained=False,
        bank=torch.zeros(int(bank["rows"]), int(bank["dim"])),
        indices=list(info["feature_indices"]),
        image_bank=torch.zeros(int(image["rows"]), int(image["dim"])) if image else False,
        features=info.get("patch_features", "fine"),  # absent in runs fitted before the choice: fine
    )
    state = torch.load(run.dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(upgrade_state(state))
    return model.eval()


def run_norm(run) -> Normalisation:
    return Normalisation.from_dict(run.info["anomaly"])


def binary_split(split, normal: int):
    """The split relabelled normal (0) / anomalous (1): the same images, so the
    test split holds both kinds, seeded and stratified by the source's classes."""
    import dataclasses

    return dataclasses.replace(
        split,
        classes=list(CLASSES),
        parts={k: [(p, int(y != normal)) for p, y in v] for k, v in split.parts.items()},
        soft={},
    )


def fit_patchcore(opts: dict, split, out):
    """Fit PatchCore on the train split's --normal images, set the threshold on
    validation, evaluate on test: what the finetune stage writes as the run."""
    import timm

    from edgetune.models.backbone import resolve_preprocess
    from edgetune.tasks.anomaly.patchcore import build_patchcore, feature_indices
    from edgetune.tasks.base import Fitted

    started = time.time()
    opts = {**DEFAULTS, **{k: v for k, v in opts.items() if v is not None}}
    indices = feature_indices(opts["model"], opts["patch_features"])
    normal = normal_index(split.classes, opts.get("normal"), opts["data"])
    source_classes, normal_class = split.classes, split.classes[normal]
    split = binary_split(split, normal)
    train = [p for p, y in split.parts["train"] if y == 0]
    if len(train) < MIN_NORMAL:
        raise EdgetuneError(
            f"--normal {normal_class}: the train split holds only {len(train)} image(s) of that class; PatchCore "
            f"needs at least {MIN_NORMAL} normal images to fit on (hundreds are better). Add images of good parts."
        )
    torch.manual_seed(opts["seed"])
    spec = resolve_preprocess(timm.create_model(opts["model"], pretrained=False), opts.get("img_size"))
    model = build_patchcore(
        opts["model"],
        tuple(spec.size),
        opts["pretrained"],
        opts.get("weights"),
        indices=indices,
        image_bank=bool(opts["image_score"]),
        features=opts["patch_features"],
    )
    logger.info(
        "Fitting PatchCore on %d '%s' images of the train split: %s at %dx%d, coreset %g.",
        len(train),
        normal_class,
        opts["model"],
        *spec.size,
        opts["coreset"],
    )
    batch = int(opts["batch_size"])
    bank = fit_bank(
        model,
        train,
        spec,
        float(opts["coreset"]),
        float(opts["max_bank_mb"]),
        int(opts["seed"]),
        batch,
        opts["bank_rows"],
    )
    norm, val_info = calibrate(model, split, spec, normal_class, float(opts["max_false_alarm"]), batch)
    test = evaluate_split(model, split, spec, norm, "test", batch)
    metrics = {
        "test": test,
        "bank": bank,
        "threshold": norm.to_dict(),
        **val_info,
        "fit_seconds": round(time.time() - started, 1),
    }
    info = {
        "anomaly": {
            **norm.to_dict(),
            "source_classes": source_classes,
            "feature_indices": indices,
            "patch_features": opts["patch_features"],
            "bank": bank,
        }
    }
    auroc, far = test.get("auroc"), test["false_alarm_rate"]
    logger.info(
        "PatchCore on %s: bank %d x %d (%.1f MB); test AUROC %s, F1 %.3f, false alarms %s at threshold %.4g (raw; %s).",
        opts["model"],
        bank["rows"],
        bank["dim"],
        bank["size_mb"],
        f"{auroc:.4f}" if auroc is not None else "-",
        test["f1"],
        f"{100 * far:.1f}%" if far is not None else "-",
        norm.threshold_raw,
        norm.rule,
    )
    return Fitted(model, spec, split, metrics, stage="fit", info=info)
