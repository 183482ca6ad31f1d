"""Classification metrics from labels and logits: one definition for evaluate,
the training loop's validation, bench and the CI gate. The counts are numpy (a
device install, without scikit-learn, benchmarks labelled images too); the ROC
curve of a full evaluation is scikit-learn's."""

from __future__ import annotations

import numpy as np

from edgetune.runtime.tasks.classification import softmax  # noqa: F401 - the device's own, for the build side too


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (scikit-learn's zero_division=0)."""
    return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    """Counts, rows true class, columns predicted class."""
    return np.bincount(np.asarray(y_true) * n + np.asarray(y_pred), minlength=n * n).reshape(n, n)


def classification_metrics(y_true, logits, classes: list[str], full: bool = True) -> dict:
    y_true = np.asarray(y_true, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    y_pred = logits.argmax(axis=1)
    cm = confusion(y_true, y_pred, len(classes)).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    p, r = _ratio(tp, predicted), _ratio(tp, support)
    f = _ratio(2 * p * r, p + r)
    out = {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(r[support > 0].mean()) if len(y_true) else 0.0,  # mean recall of the classes present
        "f1": float(np.mean(f)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }
    if not full:
        return out
    out["confusion_matrix"] = cm.astype(int).tolist()
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
