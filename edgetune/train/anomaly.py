"""Fitting PatchCore on the normal images of a split (the mechanics; the
driver that writes the run is stages/anomaly.py): patch embeddings of the train
split's normal images -> greedy coreset (the memory bank, bounded in MB) ->
threshold and normalisation on the validation split; scoring; restoring a
fitted run's module.

Only the normal class of the train split is ever seen while fitting; labelled
anomalies in train are not used. Validation anomalies, where there are some,
choose the threshold (F1-optimal); otherwise a quantile of the normal scores."""

from __future__ import annotations

import time

import numpy as np
import torch

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime.anomaly import CLASSES, Normalisation

logger = log.get(__name__)
MIN_NORMAL = 10
DEFAULTS = {"coreset": 0.1, "max_bank_mb": 256.0, "max_false_alarm": 0.01, "batch_size": 16}


def normal_index(classes: list[str], normal: str | None, source: str) -> int:
    if not normal:
        raise EdgetuneError(
            f"--task anomaly needs --normal CLASS: the class of good parts to fit on. Classes in {source}: {', '.join(classes)}."
        )
    if normal not in classes:
        raise EdgetuneError(f"--normal {normal}: no such class in {source}. Its classes are: {', '.join(classes)}.")
    return classes.index(normal)


def anomalous_labels(pairs: list[tuple[str, int]], normal: int = 0) -> np.ndarray:
    return np.array([y != normal for _, y in pairs], dtype=bool)


@torch.no_grad()
def embed_images(embedder, paths: list[str], spec, batch_size: int = 16, desc: str = "") -> torch.Tensor:
    """(images, D, h, w) patch embeddings of `paths`, preprocessed as in training."""
    from edgetune.data.dataset import eval_loader
    from edgetune.data.transforms import EvalTransform

    out = []
    with log.progress(desc or "embedding", total=len(paths)) as advance:
        for x, _ in eval_loader([(p, 0) for p in paths], EvalTransform(spec), batch_size):
            out.append(embedder(x))
            advance(len(x))
    return torch.cat(out)


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


def fit_bank(model, paths: list[str], spec, coreset: float, max_bank_mb: float, seed: int, batch_size: int) -> dict:
    """Fill `model`'s memory bank from the normal images at `paths`; returns its record."""
    from edgetune.models.patchcore import bank_mb, greedy_coreset

    if not 0 < coreset <= 1:
        raise EdgetuneError(
            f"--coreset {coreset}: give the fraction of patch features to keep, in (0, 1] (0.1 keeps one in ten)."
        )
    (h, w), dim, n = (
        model.grid,
        int(model.bank_mean.shape[0]),
        len(paths),
    )  # the bank's size, before embedding every image
    rows = max(1, int(round(n * h * w * coreset)))
    size_mb = bank_mb(rows, dim)
    if size_mb > max_bank_mb:
        raise EdgetuneError(
            f"The memory bank would hold {rows} patch features of {dim} values ({n} images x {h}x{w} patches x --coreset {coreset:g}): "
            f"{size_mb:.1f} MB, over --max-bank-mb {max_bank_mb:g}. Lower --coreset (e.g. {coreset * max_bank_mb / size_mb / 1.05:.3g}) "
            f"or --img-size (now {spec.size[0]}; the patch grid shrinks with its square), or raise --max-bank-mb."
        )
    emb = embed_images(model.embedder, paths, spec, batch_size, "patch features of normal images")
    patches = emb.permute(0, 2, 3, 1).reshape(-1, dim)
    started = time.time()
    with log.progress(f"coreset: {rows} of {len(patches)} patches", total=rows) as advance:
        last = [0]

        def step(i):
            advance(i - last[0])
            last[0] = i

        idx = greedy_coreset(patches, rows, seed, step)
        advance(rows - last[0])
    model.set_bank(patches[idx])
    return {
        "rows": rows,
        "dim": dim,
        "size_mb": round(size_mb, 3),
        "patches": int(len(patches)),
        "images": n,
        "grid": [h, w],
        "coreset": coreset,
        "coreset_seconds": round(time.time() - started, 1),
    }


def calibrate(
    model, split, spec, normal_class: str, max_false_alarm: float, batch_size: int
) -> tuple[Normalisation, dict]:
    """Threshold + normalisation from the (binary) validation split's raw scores."""
    from edgetune.metrics import anomaly_threshold

    val = split.parts["val"]
    y = anomalous_labels(val)
    if (~y).sum() == 0:
        raise EdgetuneError(
            f"The validation split holds no '{normal_class}' images to set the threshold on; give more data or a larger --val-frac."
        )
    if not 0 < max_false_alarm < 1:
        raise EdgetuneError(
            f"--max-false-alarm {max_false_alarm}: give the share of normal images allowed to raise an alarm, in (0, 1) (0.01 = 1%)."
        )
    scores, _ = score_images(model, [p for p, _ in val], spec, batch_size, "validation scores")
    threshold, rule = anomaly_threshold(y, scores, max_false_alarm)
    norm = Normalisation.from_scores(threshold, scores, spec.size, rule, normal_class)
    return norm, {"val_scores_raw": {"min": float(scores.min()), "max": float(scores.max())}}


def evaluate_split(model, split, spec, norm: Normalisation, part: str = "test", batch_size: int = 16) -> dict:
    from edgetune.metrics import anomaly_metrics

    pairs = split.parts[part]
    scores, _ = score_images(model, [p for p, _ in pairs], spec, batch_size, f"{part} scores")
    return anomaly_metrics(anomalous_labels(pairs), norm.apply(scores))


def load_patchcore(run):
    """A fitted anomaly run's PatchCore module, rebuilt from its records (weights_only)."""
    from edgetune.models.patchcore import build_patchcore

    info = run.info.get("anomaly") or {}
    bank = info.get("bank") or {}
    model = build_patchcore(
        run.model_name,
        tuple(run.spec.size),
        pretrained=False,
        bank=torch.zeros(int(bank["rows"]), int(bank["dim"])),
        indices=list(info["feature_indices"]),
    )
    model.load_state_dict(torch.load(run.dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def run_norm(run) -> Normalisation:
    return Normalisation.from_dict(run.info["anomaly"])


def load_patchcore_logits(run):
    from edgetune.models.patchcore import PatchCoreLogits

    norm = run_norm(run)
    return PatchCoreLogits(load_patchcore(run), norm.center, norm.scale).eval()


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
