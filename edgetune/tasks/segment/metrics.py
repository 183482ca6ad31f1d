"""Segmentation metrics, one definition for evaluate, bench, the build's
artifacts and the gate, from typed results (masks at each frame's own size)
against the true masks read at that size.

Pixel metrics come from the confusion matrix summed over every image: per class
IoU = TP / (TP + FP + FN) and Dice = 2TP / (2TP + FP + FN) (a class absent from
both truth and prediction has none); `miou` averages IoU over the classes with
background, `miou_defects` over the defect classes; `pixel_accuracy`. The line's
view: an image is predicted defective when it holds a defect region of at least
the bundle's minimum area; `image_auroc` ranks images by `defect_score` against
"has a true defect pixel", `image_f1`/precision/recall score the decision, and
`region_recall` is the share of true defect regions (8-connected, any class) of at
least the minimum area that a kept predicted region touches (37% of the
magnetic-tile masks' regions are specks under 16 px, most of one pixel)."""

from __future__ import annotations

import numpy as np

from edgetune.data.masks import read_label

HEADLINE = (
    "n",
    "miou",
    "miou_defects",
    "pixel_accuracy",
    "image_auroc",
    "image_f1",
    "image_precision",
    "image_recall",
    "region_recall",
    "true_regions",
)


def confusion(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts, rows true class, columns predicted."""
    idx = truth.ravel().astype(np.int64) * n + np.minimum(pred.ravel(), n - 1).astype(np.int64)
    return np.bincount(idx, minlength=n * n).reshape(n, n)


def scores(cm: np.ndarray) -> dict:
    """IoU and Dice per class (NaN where a class is in neither truth nor prediction),
    their means with and without class 0, and pixel accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, truth, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = truth + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (truth + pred), np.nan)
    return {
        "iou": iou,
        "dice": dice,
        "miou": _mean(iou),
        "miou_defects": _mean(iou[1:]),
        "pixel_accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 0.0,
    }


def _mean(values: np.ndarray) -> float | None:
    ok = values[~np.isnan(values)]
    return float(ok.mean()) if len(ok) else None


def kept_pixels(result) -> np.ndarray:
    """The result's defect pixels in regions of at least its minimum area."""
    import cv2

    keep = np.zeros(result.mask.shape, bool)
    for cls in np.unique(result.mask[result.mask > 0]):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((result.mask == cls).astype(np.uint8), connectivity=8)
        big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= result.min_area)
        keep |= np.isin(labels, big[big > 0])
    return keep


def per_image(results: list, targets: list, n_classes: int) -> dict:
    """Per image: confusion matrices (N, C, C), whether the truth has a defect, and
    its true regions and how many a kept predicted region touches."""
    import cv2

    cms, truth_defective, regions, hit = [], [], [], []
    for result, target in zip(results, targets):
        truth = read_label(target, result.size)
        cms.append(confusion(truth, result.mask, n_classes))
        truth_defective.append(bool((truth > 0).any()))
        n, labels, stats, _ = cv2.connectedComponentsWithStats((truth > 0).astype(np.uint8), connectivity=8)
        counted = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= result.min_area) + 1
        touched = np.unique(labels[kept_pixels(result) & (labels > 0)]) if len(counted) else []
        regions.append(len(counted))
        hit.append(len(np.intersect1d(touched, counted)))
    return {
        "cm": np.stack(cms) if cms else np.zeros((0, n_classes, n_classes), np.int64),
        "defective": np.array(truth_defective, bool),
        "regions": np.array(regions, int),
        "hit": np.array(hit, int),
    }


def segmentation_metrics(
    results: list, targets: list, classes: list[str], detail: bool = False, images: dict | None = None
) -> dict:
    """The metrics of `results` against `targets` (see the module's doc); `detail`
    adds each image's defect IoU and error share (what the report's gallery sorts by);
    `images`: their `per_image` record, where already made."""
    n = len(classes)
    p = images if images is not None else per_image(results, targets, n)
    s = scores(p["cm"].sum(0))
    out = {
        "n": len(results),
        "miou": s["miou"],
        "miou_defects": s["miou_defects"],
        "pixel_accuracy": s["pixel_accuracy"],
        "per_class": {
            c: {"iou": _num(s["iou"][k]), "dice": _num(s["dice"][k]), "pixels": int(p["cm"][:, k].sum())}
            for k, c in enumerate(classes)
        },
        **image_level(p["defective"], results),
        "region_recall": float(p["hit"].sum() / p["regions"].sum()) if p["regions"].sum() else None,
        "true_regions": int(p["regions"].sum()),
    }
    if detail:
        out["per_image"] = [image_errors(cm) for cm in p["cm"]]
    return out


def image_level(truth: np.ndarray, results: list) -> dict:
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    if not len(results):
        return {"image_auroc": None, "image_f1": None, "image_precision": None, "image_recall": None}
    pred = np.array([r.defective for r in results], bool)
    score = np.array([r.score for r in results], np.float64)
    p, r, f, _ = precision_recall_fscore_support(truth, pred, average="binary", zero_division=0)
    return {
        "image_auroc": float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else None,
        "image_f1": float(f),
        "image_precision": float(p),
        "image_recall": float(r),
    }


def image_errors(cm: np.ndarray) -> dict:
    """One image's defect IoU (None: no defect pixel in truth or prediction) and share of wrong pixels."""
    s = scores(cm)
    return {"iou_defects": s["miou_defects"], "error": 1.0 - s["pixel_accuracy"]}


def _num(v) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def headline(m: dict) -> dict:
    """What a run or bundle records: the numbers and the per-class IoU and Dice."""
    out = {k: m[k] for k in HEADLINE if k in m}
    if "per_class" in m:
        out["per_class"] = {c: {"iou": v["iou"], "dice": v["dice"]} for c, v in m["per_class"].items()}
    return out


def agreement(reference: list, candidate: list) -> float:
    """The share of images both call alike (defective or not)."""
    same = [a.defective == b.defective for a, b in zip(reference, candidate)]
    return float(np.mean(same)) if same else 1.0


def pixel_agreement(a, b) -> float:
    return float((a.mask == b.mask).mean()) if a.mask.size else 1.0
