"""Object detection on the device (torch-free): the graph's top-K candidates ->
boxes in the frame's pixels, after class-aware NMS with OpenCV.

The graph outputs, for each image, its `top_k` best candidate points (one class
each: the best of that point):

    boxes    (N, K, 4)  x1, y1, x2, y2 in pixels of the network input
    scores   (N, K)     sqrt(class probability x predicted IoU), in [0, 1]
    classes  (N, K)     class index (float32: whole numbers)

Decoding keeps the candidates scoring at least `min_score`, runs class-aware
non-maximum suppression (`cv2.dnn.NMSBoxesBatched`, IoU `nms_iou`), keeps the
`max_detections` best and maps the boxes back to the frame: preprocessing resizes
the whole frame to the input size (no letterbox), so x scales by frame width /
input width and y by the heights. Every kept box is measured (mAP needs the low
scores too); the camera line reports, draws and flags those at or above
`score_threshold` (chosen on validation). The manifest's `detect` section holds
those numbers and `input_size`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.tasks.base import TaskSession

BOXES, SCORES, CLASSES = "boxes", "scores", "classes"
NONE = "none"  # a record's class when no box reaches the threshold

# The section's defaults (a section may set each). NMS IoU 0.5, not FCOS's 0.6: on NEU-DET's validation
# images it scored higher mAP@0.5 for each of three trained models (docs/detection.md, "The decoding").
DEFAULTS = {"score_threshold": 0.5, "min_score": 0.05, "nms_iou": 0.5, "max_detections": 100}


@dataclass
class Detections:
    """One image's boxes (x1, y1, x2, y2 in its own pixels), best first."""

    boxes: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int
    threshold: float = DEFAULTS["score_threshold"]  # the boxes at or above it are the ones reported

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def reported(self) -> np.ndarray:
        """The mask of the boxes at or above the threshold."""
        return np.asarray(self.scores) >= self.threshold


def section_values(section: dict) -> dict:
    """The manifest section's decoding numbers, defaults filled in; a clear error for a broken one."""
    values = {**DEFAULTS, **{k: section[k] for k in DEFAULTS if section.get(k) is not None}}
    try:
        values = {k: float(v) for k, v in values.items()}
        size = section.get("input_size")
        values["input_size"] = tuple(int(v) for v in size) if size else None
    except (TypeError, ValueError) as e:
        raise EdgetuneError(f"The detect section of the manifest is invalid ({e}); rebuild the bundle.") from None
    if not (0 <= values["min_score"] <= values["score_threshold"] <= 1 and 0 < values["nms_iou"] <= 1):
        raise EdgetuneError(
            f"The detect section of the manifest is invalid: min_score {values['min_score']}, score_threshold "
            f"{values['score_threshold']} and nms_iou {values['nms_iou']} must satisfy 0 <= min_score <= "
            "score_threshold <= 1 and 0 < nms_iou <= 1. Rebuild the bundle."
        )
    values["max_detections"] = int(values["max_detections"])
    return values


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, min_score: float, iou: float, keep: int):
    """Indices of the boxes class-aware NMS keeps (scores >= min_score), best first, at most `keep`."""
    import cv2

    ok = np.flatnonzero(scores >= min_score)
    if not len(ok):
        return ok
    b = boxes[ok].astype(np.float32)
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    kept = np.asarray(
        cv2.dnn.NMSBoxesBatched(xywh, scores[ok].astype(np.float32), classes[ok].astype(np.int32), min_score, iou),
        dtype=np.int64,
    ).reshape(-1)
    kept = ok[kept]
    return kept[np.argsort(-scores[kept], kind="stable")][:keep]


class DetectSession(TaskSession):
    """A runtime session over a detector's graph (outputs boxes, scores, classes)."""

    task = "detect"
    outputs = (BOXES, SCORES, CLASSES)
    schema = 3  # older readers know no detect section: they must refuse the bundle
    alarm_help = "CLASS:SCORE (the best score of that class's boxes in the frame)"
    can_flag = True

    def __init__(self, session, manifest: dict):
        super().__init__(session, manifest)
        self.values = section_values(self.section)
        self.threshold = self.values["score_threshold"]

    def input_size(self) -> tuple[int, int]:
        size = self.values["input_size"] or tuple(getattr(self.session, "spec").size)
        return int(size[0]), int(size[1])

    def decode(self, outputs: dict[str, np.ndarray], sizes) -> list[Detections]:
        v = self.values
        boxes = np.asarray(outputs[BOXES], dtype=np.float32).reshape(len(sizes), -1, 4)
        scores = np.asarray(outputs[SCORES], dtype=np.float32).reshape(len(sizes), -1)
        classes = np.rint(np.asarray(outputs[CLASSES], dtype=np.float64)).astype(np.int64).reshape(len(sizes), -1)
        h_in, w_in = self.input_size()
        results = []
        for b, s, c, (h, w) in zip(boxes, scores, classes, sizes):
            keep = nms(b, s, c, v["min_score"], v["nms_iou"], v["max_detections"])
            scale = np.array([w / w_in, h / h_in, w / w_in, h / h_in], np.float32)
            frame = np.clip(b[keep] * scale, 0, np.array([w, h, w, h], np.float32))
            results.append(Detections(frame.astype(np.float32), s[keep], c[keep], self.threshold))
        return results

    # --- the camera line ----------------------------------------------------------

    def boxes(self, result: Detections, origin=(0, 0)) -> list[dict]:
        """The reported boxes as records: class, score, box in frame pixels (`origin` added)."""
        ox, oy = origin
        return [
            {
                "class": self.classes[int(c)],
                "score": round(float(s), 4),
                "box": [round(float(v) + o, 1) for v, o in zip(b, (ox, oy, ox, oy))],
            }
            for b, s, c, r in zip(result.boxes, result.scores, result.classes, result.reported)
            if r
        ]

    def record(self, result: Detections, origin=(0, 0)) -> dict:
        boxes = self.boxes(result, origin)
        best = boxes[0] if boxes else {"class": NONE, "score": 0.0}
        return {"class": best["class"], "score": best["score"], "boxes": boxes}

    def alarm_values(self, result: Detections) -> dict[str, float]:
        values = dict.fromkeys(self.classes, 0.0)
        for s, c in zip(result.scores, result.classes):
            name = self.classes[int(c)]
            values[name] = max(values[name], float(s))
        return values

    def flagged(self, result: Detections) -> bool:
        return bool(result.reported.any())

    def draw(self, image: np.ndarray, result: Detections) -> np.ndarray:
        return draw_boxes(image, result, self.classes)

    # --- results between processes --------------------------------------------------

    @classmethod
    def to_json(cls, result: Detections) -> dict:
        return {
            "boxes": np.round(np.asarray(result.boxes, np.float64), 2).tolist(),
            "scores": np.round(np.asarray(result.scores, np.float64), 5).tolist(),
            "classes": np.asarray(result.classes, np.int64).tolist(),
            "threshold": float(result.threshold),
        }

    @classmethod
    def from_json(cls, data: dict) -> Detections:
        return Detections(
            np.asarray(data["boxes"], np.float32).reshape(-1, 4),
            np.asarray(data["scores"], np.float32),
            np.asarray(data["classes"], np.int64),
            float(data.get("threshold", DEFAULTS["score_threshold"])),
        )

    @classmethod
    def headline(cls, metrics: dict) -> str:
        def f(key):
            v = metrics.get(key)
            return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

        return f"mAP@0.5 {f('map50')}, mAP@0.5:0.95 {f('map50_95')}, F1 {f('f1')}"

    @classmethod
    def describe(cls, manifest: dict) -> str | None:
        v = manifest.get(cls.task) or {}
        return (
            f"task detect ({v.get('model', 'FCOS')}): outputs boxes, scores, classes (top {v.get('top_k')} "
            f"candidates at {v.get('input_size')}); class-aware NMS at IoU {v.get('nms_iou')}, boxes kept from score "
            f"{v.get('min_score')}, reported from {v.get('score_threshold')} ({v.get('threshold_rule', '')}), at most "
            f"{v.get('max_detections')} per image"
        )


def colour(index: int) -> tuple[int, int, int]:
    """A distinct BGR colour per class."""
    hue = (index * 47) % 180
    import cv2

    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_boxes(image: np.ndarray, result: Detections, classes: list[str], everything: bool = False) -> np.ndarray:
    """The reported boxes (every box with `everything`) with `class score` labels, on a copy."""
    import cv2

    out = image.copy()
    scale = max(0.35, min(out.shape[:2]) / 700)
    thick = max(1, int(round(scale * 2)))
    for b, s, c, r in zip(result.boxes, result.scores, result.classes, result.reported):
        if not (r or everything):
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in b)
        col = colour(int(c))
        cv2.rectangle(out, (x1, y1), (x2, y2), col, thick)
        text = f"{classes[int(c)] if int(c) < len(classes) else c} {float(s):.2f}"
        y = max(y1 - 3, int(12 * scale) + 2)
        cv2.putText(out, text, (x1 + 1, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, text, (x1 + 1, y), cv2.FONT_HERSHEY_SIMPLEX, scale, col, thick, cv2.LINE_AA)
    return out
