"""The anomaly detector's gate: image AUROC may drop by at most `max_drop` points.
Accuracy, F1 and the false-alarm rate at the threshold, and the flags' agreement,
are reported, not gated: post-training quantization moves scores near the
threshold, and the ranking is what the AUROC holds."""

from __future__ import annotations

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.tasks.gate import GateResult, drop_check, paired_interval


def gate(
    task,
    reference: list,
    candidate: list,
    targets,
    max_drop: float,
    names: dict | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> GateResult:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(targets).astype(bool)
    if not (len(reference) == len(candidate) == len(y)):
        raise ValueError(
            f"{len(reference)} reference and {len(candidate)} candidate results and {len(y)} labels must cover the "
            "same images"
        )
    if y.all() or not y.any():
        raise EdgetuneError(
            f"The anomaly gate needs normal and anomalous images; these {len(y)} images are all "
            f"{'anomalous' if y.all() else 'normal'}."
        )
    rs, cs = np.array([r.score for r in reference]), np.array([r.score for r in candidate])
    rm, cm = task.results_metrics(reference, y.astype(int), []), task.results_metrics(candidate, y.astype(int), [])
    diff = (cm["auroc"] - rm["auroc"]) * 100

    def auroc_diff(i):
        both = y[i].any() and not y[i].all()  # AUROC needs both kinds of image
        return roc_auc_score(y[i], cs[i]) - roc_auc_score(y[i], rs[i]) if both else None

    ci = paired_interval(auroc_diff, len(y), n_resamples, seed) or (diff, diff)
    agree = task.agreement(reference, candidate)
    text = (
        f"image AUROC {rm['auroc']:.4f} -> {cm['auroc']:.4f}; at the threshold F1 {rm['f1']:.3f} -> {cm['f1']:.3f}, "
        f"false alarms {rm['false_alarm_rate']:.2%} -> {cm['false_alarm_rate']:.2%}, flags agree on {agree:.2%}"
    )
    rows = [
        (
            "image AUROC",
            f"{rm['auroc']:.4f}",
            f"{cm['auroc']:.4f}",
            f"{diff:+.2f} points (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})",
        ),
        (
            "F1 (anomalous, at the threshold)",
            f"{rm['f1']:.4f}",
            f"{cm['f1']:.4f}",
            f"{(cm['f1'] - rm['f1']) * 100:+.2f} points",
        ),
        (
            "false-alarm rate",
            f"{rm['false_alarm_rate']:.2%}",
            f"{cm['false_alarm_rate']:.2%}",
            f"{(cm['false_alarm_rate'] - rm['false_alarm_rate']) * 100:+.2f} points",
        ),
        ("flags agree", "", "", f"{agree:.2%}"),
    ]
    return GateResult(
        rm,
        cm,
        "auroc",
        "image AUROC",
        diff,
        ci,
        agree,
        [drop_check("image AUROC", "auroc", -diff, max_drop, ci, text)],
        rows,
        names=names or {"reference": "reference", "candidate": "candidate"},
    )
