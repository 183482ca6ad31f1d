"""Classification on the device: the model's `logits` -> class probabilities.

A result is the image's logits and their softmax; its record names the most
probable class and its probability, and `--alarm CLASS:T` fires when that class's
probability is >= T."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetune.runtime.tasks.base import TaskSession


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class ClassScores:
    logits: np.ndarray  # (classes,)

    @property
    def probs(self) -> np.ndarray:
        return softmax(np.asarray(self.logits, dtype=np.float64))

    @property
    def index(self) -> int:
        return int(np.argmax(self.logits))


class ClassificationSession(TaskSession):
    task = "classification"
    outputs = ("logits",)
    openvino_type = "Classification"

    def decode(self, outputs: dict[str, np.ndarray], sizes) -> list[ClassScores]:
        logits = np.asarray(outputs[self.outputs[0]], dtype=np.float32).reshape(len(sizes), -1)
        return [ClassScores(row) for row in logits]

    def record(self, result: ClassScores, origin=(0, 0)) -> dict:
        k = result.index
        return {"class": self.classes[k], "score": round(float(result.probs[k]), 4)}

    def alarm_values(self, result: ClassScores) -> dict[str, float]:
        return dict(zip(self.classes, map(float, result.probs)))

    @classmethod
    def to_json(cls, result: ClassScores) -> list[float]:
        return np.asarray(result.logits, dtype=float).tolist()

    @classmethod
    def from_json(cls, data) -> ClassScores:
        return ClassScores(np.asarray(data, dtype=np.float32))

    @classmethod
    def headline(cls, metrics: dict) -> str:
        return f"accuracy {_pct(metrics.get('accuracy'))}, F1 {_pct(metrics.get('f1'))}"


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def logits_of(results: list[ClassScores]) -> np.ndarray:
    """The (N, classes) logits of a list of results."""
    return np.stack([r.logits for r in results]) if results else np.zeros((0, 0), np.float32)
