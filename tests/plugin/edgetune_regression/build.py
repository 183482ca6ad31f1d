"""The plug-in's build half: a CSV of path,value; a timm backbone with one output
trained on the mean squared error; gated on the mean absolute error (lower is
better). Everything else (the loop, export, bundle, bench, gate, camera) is
edgetune's, asked through the task interface."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.tasks.base import Task
from edgetune.train.hooks import TrainHooks
from edgetune_regression.runtime import RegressionSession


def _mae(pred, target) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64)))) if len(pred) else 0.0


class RegressionHooks(TrainHooks):
    metrics = ("mae", "loss")
    lower_is_better = frozenset({"mae", "loss"})

    def loss(self, model, x, y, teacher=None):
        import torch

        return torch.nn.functional.mse_loss(model(x)[:, 0], y.float())

    def predict(self, model, x, y=None):
        return model(x)[:, 0].float().cpu().numpy()

    def validate(self, outputs, targets) -> dict:
        return {"mae": _mae(outputs, targets), "loss": float(np.mean((np.asarray(outputs) - np.asarray(targets)) ** 2))}


class Regression(Task):
    name = "regression"
    help = "predict one number per image (a CSV of path,value)."
    session = RegressionSession
    metric = "mae"
    metric_label = "mean absolute error"
    lower_is_better = True
    default_max_drop = 5.0  # points: 0.05 of MAE
    columns = (("MAE", "mae", ".4f"),)
    data_help = "a CSV file with columns path,value"

    def recognises(self, spec: str) -> bool:
        path = Path(spec)
        if not path.is_file() or path.suffix != ".csv":
            return False
        with open(path, newline="") as f:
            return "value" in (next(csv.reader(f), []) or [])

    def source(self, spec: str, opts: dict):
        from edgetune.data.sources import Item, Source

        path = Path(spec)
        if not self.recognises(spec):
            raise EdgetuneError(f"--data {spec}: --task regression reads {self.data_help}.")
        with open(path, newline="") as f:
            rows = [(r["path"], float(r["value"])) for r in csv.DictReader(f)]
        edges = np.quantile([v for _, v in rows], [0.25, 0.5, 0.75])
        items = [
            Item(str((path.parent / p).resolve()), v, "", group=f"q{int(np.searchsorted(edges, v))}") for p, v in rows
        ]
        return Source(spec, ["value"], items, root=str(path.parent.resolve()))

    def align(self, pairs, source_classes, run_like, who):
        return pairs

    def create_model(self, name, classes, img_size=None, pretrained=True, weights=None, opts=None):
        from edgetune.models.backbone import create_backbone

        return create_backbone(name, 1, pretrained, weights, 0.0, img_size)

    def hooks(self, classes, cfg, train_set=None):
        return RegressionHooks()

    def datasets(self, split, spec, opts):
        from edgetune.data.dataset import ImageDataset
        from edgetune.data.transforms import EvalTransform, TrainTransform

        return (
            ImageDataset(split.parts["train"], TrainTransform(spec, opts["augment"])),
            ImageDataset(split.parts["val"], EvalTransform(spec)),
        )

    def evaluate(self, model, split, spec, part="test", batch_size=64) -> dict:
        from edgetune.train.predict import predict

        values, targets = predict(model, self.eval_loader(split.parts[part], spec, batch_size), hooks=RegressionHooks())
        return {"n": len(targets), "mae": _mae(values, targets)}

    def export_checks(self, path, reference, images) -> dict:
        import onnxruntime as ort
        import torch

        with torch.no_grad():
            want = reference(torch.from_numpy(images)).numpy()[:, 0]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: images})[0][:, 0]
        diff = float(np.abs(want - got).max())
        if diff > 0.1:
            raise EdgetuneError(f"Export {path}: ONNX Runtime's values differ from PyTorch's by up to {diff:.3g}.")
        return {"images": len(images), "max_value_diff": diff, "summary": f"values within {diff:.3g} of PyTorch's"}

    def results_metrics(self, results, targets, classes) -> dict:
        pred = np.array([r.value for r in results])
        return {
            "n": len(targets),
            "mae": _mae(pred, targets),
            "rmse": float(np.sqrt(np.mean((pred - np.asarray(targets)) ** 2))),
        }

    def parity(self, training, device, precision, max_diff) -> dict:
        a, b = np.array([r.value for r in training]), np.array([r.value for r in device])
        diff = np.abs(a - b)
        return {
            "agreement": float((np.round(a, 1) == np.round(b, 1)).mean()),
            "per_image": diff,
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max() / max(float(np.abs(a).max()), 1e-6)),
            "decisions": (np.zeros(len(a), int), np.zeros(len(b), int)),
            "diff_checked": True,
            "decides": "value to one decimal",
            "output": "value",
        }

    def report(self, run, part, json_file, batch_size, tta="none") -> dict:
        from edgetune.runtime.files import write_json

        m = self.evaluate(run.build_model(), run.split, run.spec, part, batch_size)
        write_json(run.dir / f"eval_{part}.json", m)
        if json_file:
            write_json(json_file, m)
        return m
