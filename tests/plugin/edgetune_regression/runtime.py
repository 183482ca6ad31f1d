"""The plug-in's torch-free half: the graph's `value` output -> one number per image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetune.runtime.tasks.base import TaskSession


@dataclass
class Value:
    value: float


class RegressionSession(TaskSession):
    task = "regression"
    outputs = ("value",)
    alarm_help = "value:THRESHOLD"

    def decode(self, outputs, sizes) -> list[Value]:
        values = np.asarray(outputs[self.outputs[0]], dtype=np.float64).reshape(len(sizes), -1)[:, 0]
        return [Value(float(v)) for v in values]

    def record(self, result: Value, origin=(0, 0)) -> dict:
        return {"class": "value", "score": round(result.value, 4), "value": round(result.value, 4)}

    def alarm_names(self) -> list[str]:
        return ["value"]

    def alarm_values(self, result: Value) -> dict[str, float]:
        return {"value": result.value}

    @classmethod
    def to_json(cls, result: Value) -> float:
        return result.value

    @classmethod
    def from_json(cls, data) -> Value:
        return Value(float(data))

    @classmethod
    def headline(cls, metrics: dict) -> str:
        mae = metrics.get("mae")
        return f"MAE {mae:.4f}" if isinstance(mae, float) else "MAE -"
