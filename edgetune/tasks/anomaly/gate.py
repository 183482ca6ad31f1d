"""The anomaly detector's gate: image AUROC may drop by at most `max_drop` points.
Accuracy, F1 and the false-alarm rate at the threshold, and the flags' agreement,
are reported, not gated: post-training quantization moves scores near the
threshold, and the ranking is what the AUROC holds."""

from __future__ import annotations

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.tasks.gate import Check, GateResult, drop_check, paired_bootstrap, paired_interval


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
    if not y.any():
        return false_alarm_gate(task, reference, candidate, max_drop, names)
    if y.all():
        raise EdgetuneError(
            f"The anomaly gate needs images of good parts; these {len(y)} images are all anomalous. Give --data "
            "with the --normal class."
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


def false_alarm_gate(task, reference: list, candidate: list, max_rise: float, names: dict | None = None) -> GateResult:
    """Good parts alone (no defect labelled yet): no AUROC can be had, and what can
    move is how many good parts are flagged. It fails when the candidate's
    false-alarm rate rose by more than `max_rise` points over the reference's beyond
    doubt: the rise's 95% interval lies above the limit. A good-only test split is
    often small, and one image flipping at the threshold moves its rate by points."""
    y = np.zeros(len(reference), int)
    rm, cm = task.results_metrics(reference, y, []), task.results_metrics(candidate, y, [])
    ref_ok = np.array([not r.anomalous for r in reference])
    cand_ok = np.array([not r.anomalous for r in candidate])
    diff = (rm["false_alarm_rate"] - cm["false_alarm_rate"]) * 100  # negative: more good parts flagged
    ci = paired_bootstrap(ref_ok, cand_ok)
    rise = -diff
    agree = task.agreement(reference, candidate)
    low, high = -ci[1], -ci[0]  # the rise's interval
    check = Check(
        "false_alarm_rise",
        low <= max_rise + 1e-9,
        rise,
        max_rise,
        f"false-alarm rate on {len(y)} good parts {rm['false_alarm_rate']:.2%} -> {cm['false_alarm_rate']:.2%}: a "
        f"rise of {rise:.2f} points, 95% CI {low:+.2f} to {high:+.2f} (fails when the whole interval is above "
        f"{max_rise:g}); no anomalous image to measure an AUROC on",
    )
    rows = [
        ("false-alarm rate", f"{rm['false_alarm_rate']:.2%}", f"{cm['false_alarm_rate']:.2%}", f"{rise:+.2f} points"),
        ("flags agree", "", "", f"{agree:.2%}"),
    ]
    names = names or {"reference": "reference", "candidate": "candidate"}
    return GateResult(rm, cm, "false_alarm_rate", "false-alarm rate", diff, ci, agree, [check], rows, names=names)
