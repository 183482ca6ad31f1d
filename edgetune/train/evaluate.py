"""A model's predictions and metrics on one part of a run's split: what the
training stages record and the CI gate compares against."""

from __future__ import annotations

import numpy as np

from edgetune.data.dataset import eval_loader
from edgetune.data.split import Split
from edgetune.data.transforms import EvalTransform
from edgetune.metrics import classification_metrics
from edgetune.runtime.preprocess import PreprocessSpec
from edgetune.train.loop import predict


def predict_split(
    model, split: Split, spec: PreprocessSpec, part: str, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    return predict(model, eval_loader(split.parts[part], EvalTransform(spec), batch_size))


def evaluate_model(model, split: Split, spec: PreprocessSpec, part: str = "test", batch_size: int = 64) -> dict:
    logits, labels = predict_split(model, split, spec, part, batch_size)
    return classification_metrics(labels, logits, split.classes)
