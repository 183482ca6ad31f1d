"""Image-level anomaly metrics and the threshold chosen on validation."""

from __future__ import annotations

import numpy as np


def anomaly_metrics(anomalous, scores, threshold: float = 0.5) -> dict:
    """Image-level anomaly detection: AUROC and AUPR of the scores (threshold-free),
    and at `threshold` (score > threshold flags): F1, precision and recall of the
    anomalous class, and the false-alarm rate (share of normal images flagged)."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(anomalous, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    flagged = s > threshold
    both = 0 < y.sum() < len(y)
    out = {
        "n": int(len(y)),
        "n_anomalous": int(y.sum()),
        "threshold": float(threshold),
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "aupr": float(average_precision_score(y, s)) if both else None,
        "f1": float(f1_score(y, flagged, zero_division=0)),
        "precision": float(precision_score(y, flagged, zero_division=0)),
        "recall": float(recall_score(y, flagged, zero_division=0)) if y.any() else None,
        "false_alarm_rate": float(flagged[~y].mean()) if (~y).any() else None,
        "accuracy": float((flagged == y).mean()) if len(y) else 0.0,
    }
    return out


def anomaly_threshold(anomalous, scores, max_false_alarm: float = 0.01) -> tuple[float, str]:
    """The raw-score threshold chosen on validation: F1-optimal where there are
    labelled anomalies, else the (1 - max_false_alarm) quantile of the normal
    scores. Returns (threshold, the rule in words)."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(anomalous, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.any() and (~y).any():
        precision, recall, thr = precision_recall_curve(y, s)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))
        # flag when score > threshold: halfway below the F1-optimal score
        below = s[s < thr[best]]
        t = (thr[best] + below.max()) / 2 if len(below) else thr[best] - 1e-6
        return float(
            t
        ), f"F1-optimal on validation ({int(y.sum())} anomalous, {int((~y).sum())} normal images; F1 {f1[best]:.3f})"
    t = float(np.quantile(s[~y], 1 - max_false_alarm))
    return (
        t,
        f"{100 * (1 - max_false_alarm):g}% quantile of {int((~y).sum())} normal validation scores (--max-false-alarm "
        f"{max_false_alarm:g})",
    )


def pixel_metrics(maps, masks, fpr_limit: float = 0.3) -> dict:
    """Pixel-level scores of heat maps (N, H, W) against binary masks (N, H, W):
    pixel AUROC over every pixel, and PRO (the MVTec AD paper's per-region
    overlap, as anomalib computes it): at each threshold, the mean over connected
    defect regions of the share of each region's pixels flagged, integrated
    against the false-positive rate of normal pixels up to `fpr_limit` and divided
    by it (1.0: every region found whole before 30% false positives). One sort of
    all pixels gives both curves."""
    import cv2

    scores = np.asarray(maps, dtype=np.float32).reshape(len(maps), -1)
    truth = np.asarray(masks).reshape(len(masks), -1) > 0
    if not truth.any() or truth.all():
        return {"pixel_auroc": None, "pro": None, "regions": 0}
    # Each defect pixel weighs 1 / (its region's size x the number of regions): summed over the
    # pixels above a threshold, that is the mean per-region overlap at that threshold.
    weight = np.zeros(truth.shape, dtype=np.float64)
    regions = 0
    for i, m in enumerate(np.asarray(masks).reshape(len(masks), *np.shape(maps)[1:])):
        n, labels = cv2.connectedComponents((m > 0).astype(np.uint8))
        flat = labels.reshape(-1)
        for r in range(1, n):
            where = flat == r
            weight[i, where] = 1.0 / where.sum()
        regions += n - 1
    weight /= regions
    order = np.argsort(-scores, axis=None, kind="stable")
    s, t, w = scores.reshape(-1)[order], truth.reshape(-1)[order], weight.reshape(-1)[order]
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct threshold
    tpr = np.cumsum(t)[last] / t.sum()
    fpr = np.cumsum(~t)[last] / (~t).sum()
    pro = np.cumsum(w)[last]
    fpr, tpr, pro = (np.r_[0.0, a] for a in (fpr, tpr, pro))
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:  # the curve's value at the limit, interpolated
        j = int(keep.sum())
        y = np.r_[y, np.interp(fpr_limit, fpr[j - 1 : j + 1], pro[j - 1 : j + 1])]
        x = np.r_[x, fpr_limit]
    return {
        "pixel_auroc": float(np.trapezoid(tpr, fpr)),
        "pro": float(np.trapezoid(y, x) / fpr_limit),
        "regions": int(regions),
    }
