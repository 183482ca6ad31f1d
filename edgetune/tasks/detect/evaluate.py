"""A PyTorch detector evaluated as the device reads it: the exported graph's own
decoding, the task session's NMS and mapping to each image's pixels; the score
threshold chosen on validation (highest F1 at IoU 0.5), then the COCO metrics of
the part asked for. Under torchrun every rank predicts its share and all get the
whole split (train/predict.py). `section` is the manifest's detect section."""

from __future__ import annotations

from edgetune.runtime.tasks.detect import DEFAULTS


def predictions(task, model, pairs: list, spec, batch_size: int, classes: list[str]) -> list:
    """The task session's results of `model` on (path, target) pairs, in the images' pixels."""
    from edgetune.tasks.detect.hooks import DetectHooks
    from edgetune.train.predict import predict

    if not pairs:
        return []
    outputs, _ = predict(model, task.eval_loader(pairs, spec, batch_size), hooks=DetectHooks(classes))
    return [o["result"] for o in outputs]


def evaluate(task, model, split, spec, part: str = "test", batch_size: int = 64) -> dict:
    from edgetune.tasks.detect.metrics import Matched, detection_metrics

    model = model.eval()
    val = predictions(task, model, split.parts["val"], spec, batch_size, split.classes)
    truth = [t for _, t in split.parts["val"]]
    threshold = Matched(val, truth, len(split.classes)).best_threshold(DEFAULTS["min_score"]) if val else 0.5
    results = val if part == "val" else predictions(task, model, split.parts[part], spec, batch_size, split.classes)
    for r in results:
        r.threshold = threshold
    m = detection_metrics(results, [t for _, t in split.parts[part]], split.classes, threshold)
    m["threshold_rule"] = "the highest F1 at IoU 0.5 on the validation split"
    m["results"] = results  # per image, for the report (not kept by headline)
    return m


def threshold_of(run) -> float | None:
    """The score threshold the run's latest stage chose on validation."""
    for record in reversed(run.info.get("history", [])):
        value = ((record.get("metrics") or {}).get("test") or {}).get("score_threshold")
        if value is not None:
            return float(value)
    return None


def section(run) -> dict:
    """The manifest's detect section (and the run's stand-in for it)."""
    from edgetune.tasks.detect.model import candidates

    h, w = run.spec.size
    threshold = threshold_of(run)
    return {
        "model": f"FCOS ({run.model_name}, FPN {(run.info.get('options') or {}).get('fpn_channels', 64)})",
        "input_size": [int(h), int(w)],
        "top_k": candidates((h, w)),
        "score_threshold": DEFAULTS["score_threshold"] if threshold is None else round(threshold, 4),
        "threshold_rule": "the highest F1 at IoU 0.5 on the validation split" if threshold is not None else "default",
        "min_score": DEFAULTS["min_score"],
        "nms_iou": DEFAULTS["nms_iou"],
        "max_detections": int(DEFAULTS["max_detections"]),
        "boxes": "x1, y1, x2, y2 in pixels of the input; the runtime maps them to the frame (whole-frame resize)",
    }
