"""Two detectors' results on the same images, side by side: the CI gate (mAP@0.5
may drop by at most `max_drop` points; its 95% interval from a paired bootstrap
over images, each resample scored by the numpy twin of COCOeval), whether they
report the same boxes (agreement), and verify's parity of the device path with
the training path."""

from __future__ import annotations

import numpy as np

from edgetune.tasks.detect.metrics import Matched, iou
from edgetune.tasks.gate import GateResult, drop_check, paired_interval


def _found(a, b) -> tuple[int, list[float], list[float]]:
    """How many of a's reported boxes b has too (same class, IoU >= 0.5, among all its
    boxes: a score on the other side of the threshold is a score difference, not a
    missed box), with their IoUs and score differences. The score difference is with
    b's box at the same place (the highest IoU), of whichever class: the graph keeps
    each location's best class, so where two classes nearly tie, rounding can hand the
    location to the other one at an equal score. That is a change of decision, which
    the class match counts, not a change of confidence."""
    found, ious, diffs = 0, [], []
    boxes_b, classes_b, scores_b = np.asarray(b.boxes).reshape(-1, 4), np.asarray(b.classes), np.asarray(b.scores)
    for box, score, cls in zip(np.asarray(a.boxes)[a.reported], a.scores[a.reported], a.classes[a.reported]):
        if not len(boxes_b):
            continue
        ov = iou(box[None], boxes_b)[0]
        same = ov * (classes_b == cls)
        if same.max() >= 0.5:
            found += 1
            ious.append(float(same.max()))
            diffs.append(abs(float(score) - float(scores_b[int(np.argmax(ov))])))
    return found, ious, diffs


def same_boxes(a, b) -> tuple[bool, list[float], list[float]]:
    """Whether each side's reported boxes are found on the other; the IoUs and score differences."""
    fa, ia, da = _found(a, b)
    fb, ib, db = _found(b, a)
    return fa == int(a.reported.sum()) and fb == int(b.reported.sum()), ia + ib, da + db


def parity(training: list, device: list) -> dict:
    """verify's comparison: the images whose reported boxes agree, and the matched boxes' score differences."""
    per = [same_boxes(a, b) for a, b in zip(training, device)]
    diff = np.array([max(d) if d else 0.0 for _, _, d in per])
    ious = [v for _, i, _ in per for v in i]
    return {
        "agreement": float(np.mean([ok for ok, _, _ in per])) if per else 1.0,
        "per_image": diff,
        "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
        "max_rel_diff": float(diff.max()) if len(diff) else 0.0,  # scores lie in [0, 1]
        "decisions": tuple(np.array([int(r.reported.sum()) for r in side]) for side in (training, device)),
        "decision": "{} boxes reported",
        "min_iou": float(min(ious)) if ious else None,
        "diff_checked": True,
        "decides": "set of reported boxes (class, IoU >= 0.5)",
        "output": "box score",
    }


def _summary(m: dict) -> dict:
    """A metrics dict for the gate's record: numbers and per-class AP, no curves."""
    out = {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}
    out["per_class"] = {c: {"ap50": v.get("ap50"), "ap50_95": v.get("ap50_95")} for c, v in m["per_class"].items()}
    return out


def gate(task, reference, candidate, targets, classes, max_drop, names, n_resamples=1000, seed=0) -> GateResult:
    if not (len(reference) == len(candidate) == len(targets)):
        raise ValueError(
            f"{len(reference)} reference and {len(candidate)} candidate results and {len(targets)} targets must cover "
            "the same images"
        )
    rm, cm = task.results_metrics(reference, targets, classes), task.results_metrics(candidate, targets, classes)
    diff = (cm["map50"] - rm["map50"]) * 100
    fr, fc = Matched(reference, targets, len(classes)), Matched(candidate, targets, len(classes))
    n = len(targets)

    def stat(i):
        w = np.bincount(i, minlength=n)
        r, c = fr.map50(w), fc.map50(w)
        return None if r is None or c is None else c - r

    ci = paired_interval(stat, n, n_resamples, seed) or (diff, diff)
    agree = task.agreement(reference, candidate)
    text = (
        f"mAP@0.5 {rm['map50']:.4f} -> {cm['map50']:.4f} (mAP@0.5:0.95 {rm['map50_95']:.4f} -> {cm['map50_95']:.4f}; "
        f"F1 at the threshold {rm['f1']:.3f} -> {cm['f1']:.3f}; reported boxes agree on {agree:.2%} of the images)"
    )
    ap = {c: ((rm["per_class"].get(c) or {}).get("ap50"), (cm["per_class"].get(c) or {}).get("ap50")) for c in classes}
    per_class = {c: (b - a) * 100 for c, (a, b) in ap.items() if a is not None and b is not None}

    def row(what: str, key: str, ci_text: str = "") -> tuple:
        return what, f"{rm[key]:.4f}", f"{cm[key]:.4f}", f"{(cm[key] - rm[key]) * 100:+.2f} points{ci_text}"

    rows = [
        row("mAP@0.5", "map50", f" (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})"),
        row("mAP@0.5:0.95", "map50_95"),
        row("F1 at the score threshold", "f1"),
        *[(f"AP@0.5 `{c}`", f"{ap[c][0]:.4f}", f"{ap[c][1]:.4f}", f"{d:+.2f} points") for c, d in per_class.items()],
        ("reported boxes agree", "", "", f"{agree:.2%}"),
    ]
    return GateResult(
        _summary(rm),
        _summary(cm),
        "map50",
        task.metric_label,
        diff,
        ci,
        agree,
        [drop_check(task.metric_label, "map50", -diff, max_drop, ci, text)],
        rows,
        per_class,
        per_class_metric="ap50",
        names=names or {"reference": "reference", "candidate": "candidate"},
    )
