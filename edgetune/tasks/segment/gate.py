"""Segmentation's gate: mIoU (with background) may drop by at most `max_drop`
points. Its 95% interval is a paired bootstrap over images that resamples each
image's confusion matrix, counted once, for both models: a resample's mIoU is
that of its summed matrix, so a thousand resamples cost a thousand sums."""

from __future__ import annotations

from edgetune.tasks.gate import GateResult, drop_check, paired_interval
from edgetune.tasks.segment.metrics import agreement, per_image, scores, segmentation_metrics


def gate(reference: list, candidate: list, targets: list, classes: list[str], max_drop: float, names: dict):
    if not (len(reference) == len(candidate) == len(targets)):
        raise ValueError(
            f"{len(reference)} reference and {len(candidate)} candidate results and {len(targets)} targets must cover "
            "the same images"
        )
    n = len(classes)
    ref_images, cand_images = per_image(reference, targets, n), per_image(candidate, targets, n)
    rm = segmentation_metrics(reference, targets, classes, images=ref_images)
    cm = segmentation_metrics(candidate, targets, classes, images=cand_images)
    diff = ((cm["miou"] or 0.0) - (rm["miou"] or 0.0)) * 100
    ref_cm, cand_cm = ref_images["cm"], cand_images["cm"]

    def stat(idx):
        r, c = scores(ref_cm[idx].sum(0))["miou"], scores(cand_cm[idx].sum(0))["miou"]
        return None if r is None or c is None else c - r

    ci = paired_interval(stat, len(targets)) or (diff, diff)
    text = f"mIoU {rm['miou'] or 0:.4f} -> {cm['miou'] or 0:.4f}"
    checks = [drop_check("mIoU", "miou", -diff, max_drop, ci, text)]
    per_class = {
        c: 100 * (cm["per_class"][c]["iou"] - rm["per_class"][c]["iou"])
        for c in classes
        if rm["per_class"][c]["iou"] is not None and cm["per_class"][c]["iou"] is not None
    }
    rows = [
        ("mIoU", _f(rm["miou"]), _f(cm["miou"]), f"{diff:+.2f} points (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})"),
        *[
            (label, _f(rm[key]), _f(cm[key]), _points(rm[key], cm[key]))
            for label, key in (
                ("mIoU, defect classes", "miou_defects"),
                ("pixel accuracy", "pixel_accuracy"),
                ("image AUROC", "image_auroc"),
                ("image F1", "image_f1"),
                ("region recall", "region_recall"),
            )
        ],
        *[
            (f"IoU `{c}`", _f(rm["per_class"][c]["iou"]), _f(cm["per_class"][c]["iou"]), f"{per_class[c]:+.2f} points")
            for c in per_class
        ],
    ]
    agree = agreement(reference, candidate)
    rows.append(("images called alike (defective or not)", "", "", f"{agree:.2%}"))
    return GateResult(
        rm, cm, "miou", "mIoU", diff, ci, agree, checks, rows, per_class, per_class_metric="iou", names=names
    )


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _points(a, b) -> str:
    return "-" if a is None or b is None else f"{100 * (b - a):+.2f} points"
