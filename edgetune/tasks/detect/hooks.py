"""The detector's training hooks: FCOS's loss on a batch; predictions decoded by
the exported graph's own decoding and the device's own NMS (the task session),
in each image's pixels, with the batch's loss; validation by mAP and that loss."""

from __future__ import annotations

import math

import numpy as np
import torch

from edgetune.errors import EdgetuneError
from edgetune.runtime.tasks.detect import DetectSession
from edgetune.tasks.detect.data import collate, plain
from edgetune.tasks.detect.loss import FCOSLoss
from edgetune.tasks.detect.metrics import Matched, fast_metrics
from edgetune.tasks.detect.model import candidates, decode
from edgetune.train.hooks import TrainHooks


def core(model):
    """The detector inside a DDP wrapper (its locations and input size)."""
    return getattr(model, "module", model)


def session_for(classes: list[str], size, section: dict | None = None) -> DetectSession:
    """The device's decoding (NMS, boxes to the frame) without a runtime: it reads tensors given to it."""
    detect = {"input_size": list(size), "top_k": candidates(size), **(section or {})}
    return DetectSession(None, {"task": DetectSession.task, "classes": list(classes), DetectSession.task: detect})


class DetectHooks(TrainHooks):
    metrics = ("map50", "map50_95", "loss")
    collate = staticmethod(collate)

    def __init__(self, classes: list[str], cfg=None, section: dict | None = None):
        for option, value in (("--mixup", getattr(cfg, "mixup", 0)), ("--distill", getattr(cfg, "distill", 0))):
            if value:
                raise EdgetuneError(f"{option} {value}: not available for --task detect; leave it at 0.")
        self.classes, self.section = list(classes), section or {}
        self.fcos = FCOSLoss(len(classes))
        self._session = None

    def loss(self, model, x, y, teacher=None) -> torch.Tensor:
        return self.fcos(core(model), model(x), y)

    def session(self, size) -> DetectSession:
        if self._session is None or self._session.input_size() != tuple(size):
            self._session = session_for(self.classes, size, self.section)
        return self._session

    def predict(self, model, x, y=None) -> list[dict]:
        det = core(model)
        out = model(x)
        loss = float(self.fcos(det, out, y)) if y is not None else math.nan
        boxes, scores, classes = decode(*out, det.points.to(x.device), det.size, candidates(det.size))
        sizes = [tuple(int(v) for v in t["size"]) for t in y] if y is not None else [det.size] * len(x)
        results = self.session(det.size).decode(
            {
                "boxes": boxes.float().cpu().numpy(),
                "scores": scores.float().cpu().numpy(),
                "classes": classes.cpu().numpy(),
            },
            sizes,
        )
        return [{"result": r, "loss": loss} for r in results]

    def validate(self, outputs, targets) -> dict:
        results = [o["result"] for o in outputs]
        truth = [plain(t) for t in targets]
        threshold = Matched(results, truth, len(self.classes)).best_threshold() if results else 0.5
        m = fast_metrics(results, truth, self.classes, threshold)
        m["loss"] = float(np.mean([o["loss"] for o in outputs])) if outputs else 0.0
        return m
