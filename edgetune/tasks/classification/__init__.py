"""Classification: one class per image, learnt from class-labelled images (a
folder of class sub-folders, a path,label CSV, ELPV); a timm backbone with a new
head, cross-entropy; the graph outputs `logits`; gated on accuracy and top-1
agreement."""

from __future__ import annotations

from edgetune.runtime.tasks.classification import ClassificationSession
from edgetune.tasks.base import Task

# The export must pick the class PyTorch picks wherever PyTorch is decisive.
MIN_AGREEMENT = 0.99


class Classification(Task):
    name = "classification"
    help = "learn the labelled classes."
    session = ClassificationSession
    metric = "accuracy"
    metric_label = "accuracy"
    default_max_drop = 0.5
    supports_tta = True

    def check(self, opts: dict) -> None:
        from edgetune.models.freeze import check_policy

        if opts.get("freeze"):
            check_policy(opts["freeze"])

    # --- the model -------------------------------------------------------------

    def create_model(self, name, classes, img_size=None, pretrained=True, weights=None, opts=None):
        from edgetune.models.backbone import create_backbone

        opts = opts or {}
        return create_backbone(name, len(classes), pretrained, weights, opts.get("drop_rate") or 0.0, img_size)

    # --- training ----------------------------------------------------------------

    def hooks(self, classes, cfg, train_set=None):
        from edgetune.tasks.classification.hooks import ClassifierHooks

        return ClassifierHooks(classes, cfg, train_set.labels if train_set is not None else None)

    def datasets(self, split, spec, opts: dict):
        from edgetune.data.dataset import train_val_datasets

        return train_val_datasets(split, spec, opts["augment"], opts.get("soft_labels", False))

    def evaluate(self, model, split, spec, part="test", batch_size=64) -> dict:
        from edgetune.tasks.classification.metrics import classification_metrics
        from edgetune.train.predict import predict

        logits, labels = predict(model, self.eval_loader(split.parts[part], spec, batch_size))
        return classification_metrics(labels, logits, split.classes)

    def headline(self, metrics: dict) -> dict:
        from edgetune.tasks.classification.metrics import headline

        return headline(metrics)

    def artifact_metrics(self, metrics: dict) -> dict:
        from edgetune.tasks.classification.metrics import headline

        return headline(metrics, extra=("confusion_matrix",))

    # --- export ------------------------------------------------------------------

    def export_checks(self, path, reference, images) -> dict:
        from edgetune.export.onnx import compare_logits

        return compare_logits(path, reference, images, MIN_AGREEMENT)

    # --- measurement -------------------------------------------------------------

    def results_metrics(self, results: list, targets: list, classes: list[str]) -> dict:
        from edgetune.runtime.tasks.classification import logits_of
        from edgetune.tasks.classification.metrics import classification_metrics

        return classification_metrics(targets, logits_of(results), classes)

    def agreement(self, reference: list, candidate: list) -> float | None:
        from edgetune.runtime.tasks.classification import logits_of
        from edgetune.tasks.classification.metrics import agreement

        return agreement(logits_of(reference), logits_of(candidate))

    def gate(self, reference, candidate, targets, classes, max_drop, min_agreement, names):
        from edgetune.runtime.tasks.classification import logits_of
        from edgetune.tasks.classification.gate import gate

        return gate(logits_of(reference), logits_of(candidate), targets, classes, max_drop, min_agreement, names)

    def row_metrics(self, results, targets, classes, reference=None) -> dict:
        from edgetune.runtime.tasks.classification import logits_of
        from edgetune.tasks.classification.metrics import classification_metrics

        m = classification_metrics(targets, logits_of(results), classes, full=False)
        return {
            "accuracy": m["accuracy"],
            "f1": m["f1"],
            "n_images": m["n"],
            "per_class_recall": {c: v["recall"] for c, v in m["per_class"].items()},
            "agreement": self.agreement(reference, results) if reference is not None else None,
        }

    def parity(self, training: list, device: list, precision: str, max_diff: float | None) -> dict:
        """Top-1 agreement, and the largest logit difference relative to the largest
        |logit| of the training side: float artifacts match to rounding, INT8 ones
        within quantization error."""
        import numpy as np

        from edgetune.runtime.tasks.classification import logits_of

        a, b = logits_of(training), logits_of(device)
        diff = np.abs(a - b).max(axis=1)
        return {
            "agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "per_image": diff,
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max() / max(float(np.abs(a).max()), 1e-6)),
            "decisions": (a.argmax(1), b.argmax(1)),
            "diff_checked": True,
        }

    # --- report ------------------------------------------------------------------

    def report(self, run, part, json_file, batch_size, tta="none") -> dict:
        from edgetune.tasks.classification.report import report

        return report(run, part, json_file, batch_size, tta)
