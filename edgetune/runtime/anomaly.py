"""Anomaly bundles on the device (torch-free): the model's raw `score` (N) and
`map` (N x H x W) -> normalised score, heat map and the `anomalous` flag.

The manifest's `anomaly` section (written by the build) holds:

    threshold_raw   the raw-score threshold chosen on validation, and its `rule`
    center, scale   normalisation: score = 0.5 + (raw - center) / scale, so the
                    threshold reads 0.5 (center = threshold_raw; scale = the
                    spread of the validation scores); the map is normalised alike
    threshold       0.5: flag an image when its normalised score exceeds it
    map_size        [H, W] of the `map` output (the model's input size)
    normal_class    the class the model was fitted on

`AnomalySession` wraps any runtime session. `detect(batch)` / `detect_frames`
give {score, map, anomalous}. For the code written for classifiers (bench,
compare, verify, camera alarms) its `run` returns two logits per image,
(0, LOGIT_SCALE * (score - 0.5)), classes ["normal", "anomalous"]: softmax
P(anomalous) is 0.5 exactly at the threshold and orders images as the score
does, so argmax is the flag and `--alarm anomalous:0.5` fires on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import preprocess

TASK = "anomaly"
CLASSES = ["normal", "anomalous"]
SCORE, MAP = "score", "map"
THRESHOLD = 0.5
LOGIT_SCALE = 10.0


@dataclass(frozen=True)
class Normalisation:
    threshold_raw: float
    center: float
    scale: float
    map_size: tuple[int, int]
    rule: str = ""
    normal_class: str = ""

    @classmethod
    def from_scores(
        cls, threshold_raw: float, scores, map_size, rule: str = "", normal_class: str = ""
    ) -> "Normalisation":
        s = np.asarray(scores, dtype=np.float64)
        spread = float(s.max() - s.min()) if len(s) else 0.0
        return cls(
            float(threshold_raw),
            float(threshold_raw),
            spread if spread > 0 else max(abs(float(threshold_raw)), 1.0),
            tuple(int(v) for v in map_size),
            rule,
            normal_class,
        )

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return (0.5 + (np.asarray(raw, dtype=np.float32) - self.center) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "threshold": THRESHOLD,
            "threshold_raw": self.threshold_raw,
            "rule": self.rule,
            "center": self.center,
            "scale": self.scale,
            "normalisation": "score = 0.5 + (raw - center) / scale",
            "map_size": list(self.map_size),
            "normal_class": self.normal_class,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        try:
            return cls(
                float(d["threshold_raw"]),
                float(d["center"]),
                float(d["scale"]),
                tuple(int(v) for v in d["map_size"]),
                str(d.get("rule", "")),
                str(d.get("normal_class", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EdgetuneError(
                f"The anomaly section of the manifest is incomplete ({e}); rebuild the bundle."
            ) from None


def score_logits(scores: np.ndarray) -> np.ndarray:
    """Normalised scores as two-class logits (see the module's doc)."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    return np.stack([np.zeros_like(s), LOGIT_SCALE * (s - THRESHOLD)], axis=1)


def logits_scores(logits: np.ndarray) -> np.ndarray:
    """The inverse of `score_logits`: normalised scores back from the logits."""
    logits = np.asarray(logits, dtype=np.float64)
    return (logits[:, 1] - logits[:, 0]) / LOGIT_SCALE + THRESHOLD


class AnomalySession:
    """A runtime session over an anomaly model's graph (outputs `score`, `map`)."""

    def __init__(self, session, norm: Normalisation):
        self.session, self.norm = session, norm
        self.name, self.precision, self.spec = session.name, session.precision, session.spec
        missing = {SCORE, MAP} - set(getattr(session, "output_names", []))
        if missing:
            raise EdgetuneError(
                f"The {session.name} model has no output {', '.join(sorted(missing))}; an anomaly bundle's model outputs "
                f"'{SCORE}' and '{MAP}'. Rebuild the bundle."
            )

    def detect(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed float32 NCHW -> {score (N), map (N, H, W), anomalous (N)}, normalised."""
        out = self.session.run_outputs(batch)
        score = self.norm.apply(out[SCORE].reshape(-1))
        return {SCORE: score, MAP: self.norm.apply(out[MAP]), "anomalous": score > THRESHOLD}

    def detect_frames(self, frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.detect(preprocess(frames, self.spec))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return score_logits(self.norm.apply(self.session.run(batch).reshape(-1)))

    def run_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return self.run(preprocess(frames, self.spec))

    def __getattr__(self, name: str):
        """Anything else (fixed_batch, inference_precision, ...) is the runtime session's."""
        if name == "session":
            raise AttributeError(name)
        return getattr(self.session, name)

    def __repr__(self) -> str:
        return f"<AnomalySession {self.name} {self.precision}>"


def heat_overlay(frame_bgr: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A normalised heat map (0.5 = threshold) laid over a BGR frame of any size:
    JET colours, transparent where the map is far below the threshold."""
    import cv2

    h, w = frame_bgr.shape[:2]
    m = np.clip(cv2.resize(np.asarray(heat, np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    colour = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * np.clip(m * 2, 0, 1))[..., None]  # fades out below half the threshold
    return (frame_bgr.astype(np.float32) * (1 - weight) + colour.astype(np.float32) * weight).astype(np.uint8)
