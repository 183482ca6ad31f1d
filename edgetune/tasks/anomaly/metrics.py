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
