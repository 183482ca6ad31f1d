"""Classification metrics from labels and logits: one definition for evaluate,
the training loop's validation, bench and the CI gate."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(y_true, logits, classes: list[str], full: bool = True) -> dict:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    logits = np.asarray(logits, dtype=np.float64)
    y_pred = logits.argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "f1": float(np.mean(f)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }
    if not full:
        return out
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if len(classes) == 2 and len(set(y_true.tolist())) == 2:
        from sklearn.metrics import roc_auc_score, roc_curve

        score = softmax(logits)[:, 1]
        out["roc_auc"] = float(roc_auc_score(y_true, score))
        fpr, tpr, thr = roc_curve(y_true, score)
        best = int(np.argmax(tpr - fpr))  # Youden's J
        out["threshold"] = {
            "score": float(min(thr[best], 1.0)),
            "tpr": float(tpr[best]),
            "fpr": float(fpr[best]),
            "rule": f"predict '{classes[1]}' when its softmax score >= score (Youden's J on this split)",
        }
    return out


def agreement(logits_a, logits_b) -> float:
    """Fraction of samples on which two models pick the same class."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else 1.0


HEADLINE = ("n", "accuracy", "balanced_accuracy", "f1", "roc_auc")


def headline(m: dict, extra: tuple[str, ...] = ()) -> dict:
    """The metrics a run or bundle records as its result (no per-image detail)."""
    return {k: m[k] for k in (*HEADLINE, *extra) if k in m}


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


def anomaly_logit_metrics(labels, logits) -> dict:
    """`anomaly_metrics` of an anomaly model's two-class logits (labels: 1 = anomalous)."""
    from edgetune.runtime.anomaly import THRESHOLD, logits_scores

    return anomaly_metrics(np.asarray(labels) == 1, logits_scores(logits), THRESHOLD)


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
        f"{100 * (1 - max_false_alarm):g}% quantile of {int((~y).sum())} normal validation scores (--max-false-alarm {max_false_alarm:g})",
    )
