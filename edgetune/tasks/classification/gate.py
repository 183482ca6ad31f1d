"""The classifier's gate: accuracy may drop by at most `max_drop` points, and both
models must pick the same class on at least `min_agreement` of the images."""

from __future__ import annotations

import numpy as np

from edgetune.tasks.classification.metrics import agreement as top1_agreement
from edgetune.tasks.classification.metrics import classification_metrics
from edgetune.tasks.gate import Check, GateResult, drop_check, paired_bootstrap


def gate(
    reference_logits,
    candidate_logits,
    labels,
    classes: list[str],
    max_drop: float = 0.5,
    min_agreement: float = 0.99,
    names: dict | None = None,
) -> GateResult:
    """Run both gates. `max_drop` is in accuracy points (0.5 = half a percent);
    `min_agreement` a fraction in 0..1."""
    ref, cand = np.asarray(reference_logits), np.asarray(candidate_logits)
    labels = np.asarray(labels)
    if ref.shape != cand.shape or len(ref) != len(labels):
        raise ValueError(
            f"reference logits {ref.shape}, candidate logits {cand.shape} and {len(labels)} labels must cover the same "
            "images"
        )
    rm = classification_metrics(labels, ref, classes, full=False)
    cm = classification_metrics(labels, cand, classes, full=False)
    diff = (cm["accuracy"] - rm["accuracy"]) * 100
    ci = paired_bootstrap(ref.argmax(1) == labels, cand.argmax(1) == labels)
    agree = top1_agreement(ref, cand)
    recall = {c: (cm["per_class"][c]["recall"] - rm["per_class"][c]["recall"]) * 100 for c in classes}
    checks = [
        drop_check(
            "accuracy", "accuracy", -diff, max_drop, ci, f"accuracy {rm['accuracy']:.2%} -> {cm['accuracy']:.2%}"
        ),
        Check(
            "agreement",
            agree >= min_agreement - 1e-12,
            agree,
            min_agreement,
            f"top-1 agreement {agree:.2%} on {len(labels)} images (minimum {min_agreement:.2%})",
        ),
    ]
    rows = [
        (
            "accuracy",
            f"{rm['accuracy']:.2%}",
            f"{cm['accuracy']:.2%}",
            f"{diff:+.2f} points (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})",
        ),
        ("F1 (macro)", f"{rm['f1']:.4f}", f"{cm['f1']:.4f}", f"{(cm['f1'] - rm['f1']) * 100:+.2f} points"),
        *[
            (
                f"recall `{c}`",
                f"{rm['per_class'][c]['recall']:.2%}",
                f"{cm['per_class'][c]['recall']:.2%}",
                f"{recall[c]:+.2f} points",
            )
            for c in classes
        ],
        ("top-1 agreement", "", "", f"{agree:.2%}"),
    ]
    return GateResult(
        rm,
        cm,
        "accuracy",
        "accuracy",
        diff,
        ci,
        agree,
        checks,
        rows,
        recall,
        names=names or {"reference": "reference", "candidate": "candidate"},
    )
