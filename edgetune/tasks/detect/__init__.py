"""Object detection: boxes and their classes, learnt from Pascal VOC, COCO JSON or
YOLO txt data; an FCOS-style anchor-free detector on a timm CNN backbone with a
light FPN (model.py), trained by the training loop with focal, GIoU and
box-quality losses (loss.py); the graph outputs a fixed top-K of decoded boxes,
scores and classes, and the torch-free runtime runs class-aware NMS (OpenCV);
metrics by the COCO protocol (pycocotools), gated on mAP@0.5."""

from __future__ import annotations

import click

from edgetune.runtime.tasks.detect import DetectSession
from edgetune.tasks.base import Task

# A reported box the export must find again: PyTorch's candidates scoring at least this.
CHECK_SCORE = 0.3


class Detect(Task):
    name = "detect"
    help = (
        "find and classify objects by boxes (Pascal VOC, COCO JSON or YOLO txt data); the model is an FCOS-style "
        "detector on the backbone."
    )
    session = DetectSession
    metric = "map50"
    metric_label = "mAP@0.5"
    default_max_drop = 1.0
    columns = (("mAP@0.5", "map50", ".4f"), ("mAP@.5:.95", "map50_95", ".4f"), ("F1", "f1", ".4f"))
    options = (
        click.option(
            "--images",
            type=click.Path(file_okay=False),
            help="--task detect with a COCO .json --data: the folder of its images (default: beside the file, or its "
            "images/ folder).",
        ),
        click.option(
            "--fpn-channels",
            type=click.IntRange(8, 512),
            default=64,
            show_default=True,
            help="--task detect: channels of the detector's feature pyramid and head.",
        ),
    )
    overrides = {"images": "Override finetune's --images: the folder of a COCO .json's images (--task detect)."}

    @property
    def data_help(self) -> str:
        from edgetune.tasks.detect.readers import HELP

        return HELP

    # --- data ------------------------------------------------------------------------

    def recognises(self, spec: str) -> bool:
        from edgetune.tasks.detect.readers import kind

        return kind(spec) is not None

    def source(self, spec: str, opts: dict):
        from edgetune.tasks.detect.readers import read_source

        return read_source(spec, opts)

    def align(self, pairs, source_classes, run_like, who) -> list:
        """Labels by the model's class order; a class the model does not know is an error."""
        from edgetune.errors import EdgetuneError

        classes = list(run_like["classes"])
        if list(source_classes) == classes:
            return pairs
        unknown = [c for c in source_classes if c not in classes]
        if unknown:
            raise EdgetuneError(
                f"{who} detects classes {classes}, but the images are labelled with {unknown} too. Give --data "
                "labelled with the classes the model was trained on."
            )
        index = [classes.index(c) for c in source_classes]
        return [(p, {"boxes": t["boxes"], "labels": [index[k] for k in t["labels"]]}) for p, t in pairs]

    # --- the model ---------------------------------------------------------------------

    def check(self, opts: dict) -> None:
        from edgetune.errors import EdgetuneError
        from edgetune.models.freeze import check_policy
        from edgetune.tasks.detect.model import STRIDES, feature_indices

        size, s = opts.get("img_size"), STRIDES[-1]
        if size and size % s:
            raise EdgetuneError(
                f"--img-size {size}: a detector's input must be a multiple of {s} (its coarsest stride), e.g. "
                f"{max(s, size // s * s)} or {(size // s + 1) * s}."
            )
        if opts.get("freeze"):
            check_policy(opts["freeze"])
        if opts.get("model"):
            feature_indices(opts["model"])

    def create_model(self, name, classes, img_size=None, pretrained=True, weights=None, opts=None):
        import timm

        from edgetune.tasks.detect.model import create_detector

        if not img_size:
            img_size = tuple(timm.get_pretrained_cfg(name).input_size[1:]) if timm.get_pretrained_cfg(name) else 224
        size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        width = (opts or {}).get("fpn_channels") or 64
        return create_detector(name, classes, size, pretrained, weights, width)

    def run_info(self, opts: dict) -> dict:
        return {"options": {"fpn_channels": opts.get("fpn_channels") or 64}}

    def prune_ignored(self, model) -> list:
        return model.prediction_layers()

    # --- training ------------------------------------------------------------------------

    def hooks(self, classes, cfg, train_set=None):
        from edgetune.tasks.detect.hooks import DetectHooks

        return DetectHooks(classes, cfg)

    def datasets(self, split, spec, opts: dict):
        from edgetune.data.augment import Augment
        from edgetune.tasks.detect.data import BoxDataset

        augment = Augment.parse(opts.get("augment") or "none")
        return BoxDataset(split.parts["train"], spec, augment), BoxDataset(split.parts["val"], spec)

    def eval_loader(self, pairs, spec, batch_size: int):
        from edgetune.data.dataset import make_loader
        from edgetune.tasks.detect.data import BoxDataset, collate

        return make_loader(BoxDataset(pairs, spec), batch_size, shuffle=False, collate_fn=collate)

    def evaluate(self, model, split, spec, part="test", batch_size=64) -> dict:
        """COCO metrics on `part`, precision/recall/F1 at the F1-optimal score threshold on validation."""
        from edgetune.tasks.detect.evaluate import evaluate

        return evaluate(self, model, split, spec, part, batch_size)

    def artifact_metrics(self, metrics: dict) -> dict:
        per_class = {c: {k: v[k] for k in ("ap50", "ap50_95")} for c, v in (metrics.get("per_class") or {}).items()}
        return {**self.headline(metrics), "per_class": per_class}

    # --- export ----------------------------------------------------------------------------

    def deploy_module(self, model):
        from edgetune.tasks.detect.model import Decode

        return model if isinstance(model, Decode) else Decode(model)

    def export_checks(self, path, reference, images) -> dict:
        from edgetune.tasks.detect.export import compare_candidates

        return compare_candidates(path, reference, images, CHECK_SCORE)

    def manifest(self, run) -> dict:
        from edgetune.tasks.detect.evaluate import section

        return {"task": self.name, "classes": list(run.classes), self.name: section(run)}

    def outputs_doc(self, spec) -> dict:
        from edgetune.tasks.detect.model import candidates

        (h, w), k = spec.size, candidates(spec.size)
        return {
            "boxes": f"(N, {k}, 4) x1, y1, x2, y2 of the top candidates, pixels of the {h}x{w} input",
            "scores": f"(N, {k}) sqrt(class probability x predicted IoU)",
            "classes": f"(N, {k}) class index, float32 (NMS runs on the device: class-aware, OpenCV)",
        }

    # --- measurement -------------------------------------------------------------------------

    def results_metrics(self, results, targets, classes) -> dict:
        from edgetune.tasks.detect.metrics import detection_metrics

        return detection_metrics(results, targets, classes)

    def agreement(self, reference, candidate) -> float | None:
        from edgetune.tasks.detect.compare import same_boxes

        same = [same_boxes(a, b)[0] for a, b in zip(reference, candidate)]
        return float(sum(same) / len(same)) if same else 1.0

    def gate(self, reference, candidate, targets, classes, max_drop, min_agreement, names):
        from edgetune.tasks.detect.compare import gate

        return gate(self, reference, candidate, targets, classes, max_drop, names)

    def row_metrics(self, results, targets, classes, reference=None) -> dict:
        m = self.results_metrics(results, targets, classes)
        return {  # a row's `precision` is the artifact's (fp32, int8): the boxes' is `box_precision`
            **{k: m[k] for k in ("map50", "map50_95", "f1", "score_threshold")},
            "box_precision": m["precision"],
            "box_recall": m["recall"],
            "n_images": m["n"],
            "per_class_ap50": {c: v.get("ap50") for c, v in m["per_class"].items()},
            "agreement": self.agreement(reference, results) if reference is not None else None,
        }

    def parity(self, training, device, precision, max_diff) -> dict:
        from edgetune.tasks.detect.compare import parity

        return parity(training, device)

    def report(self, run, part, json_file, batch_size, tta="none") -> dict:
        from edgetune.tasks.detect.report import report

        return report(run, part, json_file, batch_size)
