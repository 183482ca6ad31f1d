"""Detection metrics: the COCO protocol by pycocotools (mAP@0.5, mAP@0.5:0.95,
per-class AP, the precision-recall curves), and a numpy twin of its matching for
what runs many times: validation every epoch, the F1-optimal score threshold and
the gate's paired bootstrap over images (resampling COCOeval a thousand times
takes minutes; reweighting matched detections takes milliseconds).

The twin matches as COCOeval does (per image and class, detections best first,
at most 100, each taking the unmatched box it overlaps most at IoU >= t) and
interpolates precision at 101 recall points, so both give the same mAP; a test
holds them together. Precision, recall and F1 are counted at the score threshold:
a detection at or above it is a true positive when it matches at IoU 0.5."""

from __future__ import annotations

import contextlib
import io

import numpy as np

IOUS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of x1, y1, x2, y2 boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _target(t) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(t["boxes"], np.float64).reshape(-1, 4), np.asarray(t["labels"], np.int64).reshape(-1)


class Matched:
    """Every detection of a set of images matched to the true boxes at each IoU of
    IOUS, once; metrics of any reweighting of the images (a bootstrap resample)
    come from these flags."""

    def __init__(self, results: list, targets: list, num_classes: int):
        self.n, self.num_classes = len(results), num_classes
        self.gt = np.zeros((self.n, num_classes), np.int64)  # true boxes per image and class
        img, cls, score, tp = [], [], [], []
        for i, (r, t) in enumerate(zip(results, targets)):
            gb, gl = _target(t)
            np.add.at(self.gt[i], gl[gl < num_classes], 1)
            boxes, scores, classes = np.asarray(r.boxes).reshape(-1, 4), np.asarray(r.scores), np.asarray(r.classes)
            for c in np.unique(classes):
                d = np.flatnonzero(classes == c)
                d = d[np.argsort(-scores[d], kind="mergesort")][:MAX_DETS]
                g = np.flatnonzero(gl == c)
                flags = np.zeros((len(IOUS), len(d)), bool)
                if len(g):
                    ov = iou(boxes[d], gb[g])
                    for k, t_iou in enumerate(IOUS):
                        free = np.ones(len(g), bool)
                        for j in range(len(d)):
                            cand = np.where(free, ov[j], -1.0)
                            m = int(np.argmax(cand))
                            if cand[m] >= min(t_iou, 1 - 1e-10):
                                free[m], flags[k, j] = False, True
                img += [i] * len(d)
                cls += [int(c)] * len(d)
                score += scores[d].tolist()
                tp.append(flags)
        self.img = np.asarray(img, np.int64)
        self.cls = np.asarray(cls, np.int64)
        self.score = np.asarray(score, np.float64)
        self.tp = np.concatenate(tp, axis=1) if tp else np.zeros((len(IOUS), 0), bool)
        order = np.argsort(-self.score, kind="mergesort")
        self.img, self.cls, self.score, self.tp = self.img[order], self.cls[order], self.score[order], self.tp[:, order]

    def ap(self, weights: np.ndarray | None = None, ious: slice = slice(None)) -> np.ndarray:
        """(classes, IoUs) AP, NaN for a class without true boxes."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, np.float64)
        n_gt = w @ self.gt
        tps = self.tp[ious]
        out = np.full((self.num_classes, len(tps)), np.nan)
        for c in range(self.num_classes):
            if n_gt[c] <= 0:
                continue
            sel = self.cls == c
            wd = w[self.img[sel]]
            for k, flags in enumerate(tps[:, sel]):
                tpc, fpc = np.cumsum(wd * flags), np.cumsum(wd * ~flags)
                out[c, k] = _interpolated_ap(tpc / n_gt[c], tpc / np.maximum(tpc + fpc, 1e-12))
        return out

    def map50(self, weights=None) -> float | None:
        ap = self.ap(weights, slice(0, 1))
        return float(np.nanmean(ap)) if np.isfinite(ap).any() else None

    def counts(self, threshold: float, weights=None) -> tuple[float, float, float]:
        """(true positives, false positives, missed boxes) at IoU 0.5 for detections >= threshold."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, np.float64)
        above = self.score >= threshold
        wd = w[self.img]
        tp = float((wd * (self.tp[0] & above)).sum())
        fp = float((wd * (~self.tp[0] & above)).sum())
        return tp, fp, float((w @ self.gt).sum()) - tp

    def best_threshold(self, floor: float = 0.0) -> float:
        """The score threshold of the highest F1 (IoU 0.5, every class pooled)."""
        if not len(self.score):
            return max(floor, 0.5)
        n_gt = float(self.gt.sum())
        tp = np.cumsum(self.tp[0])
        fp = np.cumsum(~self.tp[0])
        f1 = 2 * tp / np.maximum(2 * tp + fp + (n_gt - tp), 1e-12)
        return float(max(self.score[int(np.argmax(f1))], floor))


def _interpolated_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's: precision made non-increasing, read at 101 recall points (0 past the last)."""
    if not len(recall):
        return 0.0
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALLS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def prf(tp: float, fp: float, fn: float) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def fast_metrics(results: list, targets: list, classes: list[str], threshold: float) -> dict:
    """mAP (numpy twin of COCOeval) and precision/recall/F1 at `threshold`: validation's."""
    m = Matched(results, targets, len(classes))
    ap = m.ap()
    return {
        "map50": float(np.nanmean(ap[:, 0])) if np.isfinite(ap).any() else 0.0,
        "map50_95": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
        **prf(*m.counts(threshold)),
    }


def coco_eval(results: list, targets: list, num_classes: int):
    """pycocotools' COCOeval of the results (bbox, every area, 100 detections), accumulated."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dts = [], [], []
    for i, (r, t) in enumerate(zip(results, targets)):
        images.append({"id": i + 1})
        for b, c in zip(*_target(t)):
            w, h = b[2] - b[0], b[3] - b[1]
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": int(c) + 1, "bbox": [*b[:2], w, h]})
            gts[-1].update(area=float(w * h), iscrowd=0)
        for b, s, c in zip(np.asarray(r.boxes).reshape(-1, 4), r.scores, r.classes):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            dts.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [float(b[0]), float(b[1]), w, h]})
            dts[-1].update(score=float(s), area=w * h, id=len(dts))
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": c + 1} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = COCO()
        dt.dataset = {"images": images, "annotations": dts, "categories": gt.dataset["categories"]}
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def detection_metrics(results: list, targets: list, classes: list[str], threshold: float | None = None) -> dict:
    """The full metrics of evaluate, bundles and bench: COCOeval's mAP, per-class AP and
    PR curves, and precision/recall/F1 at `threshold` (default: the results' own)."""
    if threshold is None:
        threshold = float(results[0].threshold) if results else 0.5
    n_boxes = int(sum(len(_target(t)[1]) for t in targets))
    m = Matched(results, targets, len(classes))
    out = {"n": len(targets), "boxes": n_boxes, "detections": int(sum(len(r.scores) for r in results))}
    out.update(map50=0.0, map50_95=0.0, score_threshold=float(threshold))
    per_class, curves = {}, {}
    if n_boxes and out["detections"]:
        ev = coco_eval(results, targets, len(classes))
        out["map50_95"], out["map50"] = float(ev.stats[0]), float(ev.stats[1])
        precision = ev.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, every area, 100 detections
        for c, name in enumerate(classes):
            p = precision[:, :, c]
            if (p > -1).any():
                per_class[name] = {"ap50": float(p[0][p[0] > -1].mean()), "ap50_95": float(p[p > -1].mean())}
                curves[name] = np.clip(p[0], 0, None).round(4).tolist()
    out.update(prf(*m.counts(threshold)))
    for c, name in enumerate(classes):
        sel = m.cls == c
        above = m.score[sel] >= threshold
        tp = float((m.tp[0][sel] & above).sum())
        counts = prf(tp, float(above.sum()) - tp, float(m.gt[:, c].sum()) - tp)
        per_class.setdefault(name, {"ap50": None, "ap50_95": None}).update(counts, boxes=int(m.gt[:, c].sum()))
    out["per_class"] = per_class
    out["pr_curves"] = {"recall": RECALLS.round(2).tolist(), "precision": curves, "iou": 0.5}
    return out
