"""Anomaly detection on the device (torch-free): the model's raw `score` (N) and
`map` (N x H x W) -> normalised score, heat map and the `anomalous` flag.

The manifest's `anomaly` section (written by the build) holds:

    threshold_raw   the raw-score threshold chosen on validation, and its `rule`
    center, scale   normalisation: score = 0.5 + (raw - center) / scale, so the
                    threshold reads 0.5 (center = threshold_raw; scale = the
                    spread of the validation scores); the map is normalised alike
    threshold       0.5: flag an image when its normalised score exceeds it
    map_size        [H, W] of the `map` output (the model's input size)
    normal_class    the class the model was fitted on

`AnomalySession` wraps any runtime session. `detect(batch)` / `detect_frames` give
{score, map, anomalous} arrays; `predict` gives one `AnomalyResult` per image. A
record's class is "anomalous" or "normal" and its score the normalised score, so
`--alarm anomalous:0.5` fires on the flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import preprocess
from edgetune.runtime.tasks.base import TaskSession

CLASSES = ["normal", "anomalous"]
SCORE, MAP = "score", "map"
THRESHOLD = 0.5


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
    ) -> Normalisation:
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
    def from_dict(cls, d: dict) -> Normalisation:
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


@dataclass
class AnomalyResult:
    score: float  # normalised: 0.5 is the threshold
    anomalous: bool
    map: np.ndarray | None = None  # (H, W) normalised heat map at the model's input size


class AnomalySession(TaskSession):
    """A runtime session over an anomaly model's graph (outputs `score`, `map`)."""

    task = "anomaly"
    outputs = (SCORE, MAP)
    alarm_help = "anomalous:THRESHOLD (the normalised score; 0.5 is the threshold)"
    can_flag = True

    def __init__(self, session, manifest: dict):
        super().__init__(session, manifest)
        self.norm = Normalisation.from_dict(self.section)

    def detect(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed float32 NCHW -> {score (N), map (N, H, W), anomalous (N)}, normalised."""
        out = self.session.run_outputs(batch)
        score = self.norm.apply(out[SCORE].reshape(-1))
        return {SCORE: score, MAP: self.norm.apply(out[MAP]), "anomalous": score > THRESHOLD}

    def detect_frames(self, frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.detect(preprocess(frames, self.spec))

    def decode(self, outputs: dict[str, np.ndarray], sizes) -> list[AnomalyResult]:
        score = self.norm.apply(outputs[SCORE].reshape(-1))
        maps = self.norm.apply(outputs[MAP])
        return [AnomalyResult(float(s), bool(s > THRESHOLD), m) for s, m in zip(score, maps)]

    def record(self, result: AnomalyResult, origin=(0, 0)) -> dict:
        return {"class": CLASSES[int(result.anomalous)], "score": round(result.score, 4), "anomalous": result.anomalous}

    def alarm_names(self) -> list[str]:
        return list(CLASSES)

    def alarm_values(self, result: AnomalyResult) -> dict[str, float]:
        return {CLASSES[0]: 1.0 - result.score, CLASSES[1]: result.score}

    def flagged(self, result: AnomalyResult) -> bool:
        return result.anomalous

    def draw(self, image: np.ndarray, result: AnomalyResult) -> np.ndarray:
        return heat_overlay(image, result.map) if result.map is not None else image

    @classmethod
    def to_json(cls, result: AnomalyResult) -> dict:
        return {"score": result.score, "anomalous": result.anomalous}

    @classmethod
    def from_json(cls, data: dict) -> AnomalyResult:
        return AnomalyResult(float(data["score"]), bool(data["anomalous"]))

    @classmethod
    def headline(cls, metrics: dict) -> str:
        auroc = metrics.get("auroc")
        far = metrics.get("false_alarm_rate")
        return (
            f"image AUROC {auroc:.4f}" if isinstance(auroc, float) else "image AUROC -"
        ) + f", F1 {_pct(metrics.get('f1'))}, false alarms {_pct(far)}"

    @classmethod
    def build_note(cls, manifest: dict) -> str | None:
        bank = (manifest.get(cls.task) or {}).get("bank") or {}
        share = _search_share(manifest)
        return f"memory bank {bank.get('rows')} x {bank.get('dim')}{share}" if share else None

    @classmethod
    def describe(cls, manifest: dict) -> str | None:
        a = manifest.get(cls.task) or {}
        bank = a.get("bank") or {}
        return (
            f"task anomaly (PatchCore, fitted on '{a.get('normal_class')}'): outputs score (N) and map "
            f"{a.get('map_size')}; flag when the normalised score > {a.get('threshold')} (raw threshold "
            f"{a.get('threshold_raw', float('nan')):.5g}: {a.get('rule')}; {a.get('normalisation')}, center "
            f"{a.get('center', float('nan')):.5g}, scale {a.get('scale', float('nan')):.5g}); memory bank "
            f"{bank.get('rows')} x {bank.get('dim')}" + _search_share(manifest)
        )


def _search_share(manifest: dict) -> str:
    """The bank search's measured share of the fp32 graph's latency, from the export's record."""
    for rec in manifest.get("stages") or []:
        search = ((rec.get("metrics") or {}).get("fp32") or {}).get("search") if rec.get("stage") == "export" else None
        if search:
            return (
                f"; the search takes {100 * search['share']:.0f}% of the fp32 graph's p50 ({search['fp32_ms_p50']:.2f} "
                "ms, ONNX Runtime on the build machine)"
            )
    return ""


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def heat_overlay(frame_bgr: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A normalised heat map (0.5 = threshold) laid over a BGR frame of any size:
    JET colours, transparent where the map is far below the threshold."""
    import cv2

    h, w = frame_bgr.shape[:2]
    m = np.clip(cv2.resize(np.asarray(heat, np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    colour = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * np.clip(m * 2, 0, 1))[..., None]  # fades out below half the threshold
    return (frame_bgr.astype(np.float32) * (1 - weight) + colour.astype(np.float32) * weight).astype(np.uint8)
