"""Semantic segmentation: which class each pixel shows (class 0: background),
learnt from images with pixel masks (`edgetune.data.masks`: images/ + masks/, or
one folder per class with each mask beside its image); a timm CNN backbone with a
light FPN decoder, cross-entropy + Dice; the graph outputs the class
map `mask` (uint8, the network's input size) and `defect_score`; gated on mIoU."""

from __future__ import annotations

import click

from edgetune.runtime.tasks.segment import DEFAULT_MIN_AREA, SegmentSession
from edgetune.tasks.base import Task

MIN_PIXEL_AGREEMENT = 0.99  # the export's class map against PyTorch's
MIN_DEFECT_IOU = 0.8  # ... and their defect pixels, where PyTorch finds enough of them
MIN_DEFECT_PIXELS = 500


class Segment(Task):
    name = "segment"
    help = "learn which class each pixel shows (class 0 is background) from images with pixel masks."
    session = SegmentSession
    metric = "miou"
    metric_label = "mIoU"
    default_max_drop = 1.0
    columns = (
        ("mIoU", "miou", ".4f"),
        ("mIoU defects", "miou_defects", ".4f"),
        ("image F1", "image_f1", ".4f"),
        ("region recall", "region_recall", ".4f"),
    )
    data_help = (
        "images with pixel masks: a folder with images/ and masks/ (same file names; mask pixel = class index), or "
        "one sub-folder per class with each image's mask beside it (NAME.jpg + NAME.png; mask > 0 = that class)"
    )
    options = (
        click.option(
            "--classes",
            metavar="NAMES",
            help="--task segment: class names for mask values 0, 1, ... (background first, comma list), where the "
            "data has no classes.txt or data.yaml.",
        ),
        click.option(
            "--background",
            metavar="FOLDER",
            help="--task segment: the defect-free class folder (its images are background throughout, masks or not); "
            "by default a folder whose masks are all empty.",
        ),
        click.option(
            "--min-area",
            type=click.IntRange(1),
            default=DEFAULT_MIN_AREA,
            show_default=True,
            help="--task segment: pixels of the frame a defect region needs to flag the part (smaller ones are noise).",
        ),
    )
    overrides = {
        "background": "Override finetune's --background: the defect-free class folder (--task segment).",
        "classes": "Override finetune's --classes: mask values' class names, background first (--task segment).",
    }

    # --- data ------------------------------------------------------------------

    def recognises(self, spec: str) -> bool:
        from edgetune.data.masks import is_mask_source

        return is_mask_source(spec)

    def source(self, spec: str, opts: dict):
        from edgetune.data.masks import load_mask_source

        return load_mask_source(spec, opts.get("classes"), opts.get("background"))

    def align(self, pairs, source_classes, run_like, who) -> list:
        from edgetune.errors import EdgetuneError

        if list(run_like["classes"]) != list(source_classes):
            raise EdgetuneError(
                f"{who} segments classes {list(run_like['classes'])}, but the masks' values mean "
                f"{list(source_classes)}. Give --data with the classes (and order) the model was trained on."
            )
        return pairs

    # --- the model -------------------------------------------------------------

    def check(self, opts: dict) -> None:
        from edgetune.errors import EdgetuneError
        from edgetune.models.freeze import check_policy
        from edgetune.tasks.segment.model import STRIDE

        if opts.get("freeze"):
            check_policy(opts["freeze"])
        size = opts.get("img_size")
        if size and int(size) % STRIDE:
            raise EdgetuneError(
                f"--img-size {size}: --task segment needs a multiple of {STRIDE} (the decoder merges feature maps down "
                f"to 1/{STRIDE} of the input), e.g. {max(STRIDE, int(size) // STRIDE * STRIDE)}."
            )

    def create_model(self, name, classes, img_size=None, pretrained=True, weights=None, opts=None):
        from edgetune.tasks.segment.model import build_segmenter

        return build_segmenter(name, len(classes), pretrained, weights)

    def prune_ignored(self, model) -> list:
        from edgetune.tasks.segment.model import HEAD

        return [HEAD]

    # --- training ----------------------------------------------------------------

    def hooks(self, classes, cfg, train_set=None):
        from edgetune.tasks.segment.hooks import SegmentHooks

        return SegmentHooks(classes, cfg)

    def datasets(self, split, spec, opts: dict):
        from edgetune.tasks.segment.data import MaskDataset

        return MaskDataset(split.parts["train"], spec, opts["augment"]), MaskDataset(split.parts["val"], spec)

    def eval_loader(self, pairs, spec, batch_size):
        from edgetune.data.dataset import make_loader
        from edgetune.tasks.segment.data import MaskDataset

        return make_loader(MaskDataset(pairs, spec), batch_size, shuffle=False)

    def fit(self, opts, split, out):
        # the test metrics at the end of fitting count regions as the run will
        self._min_area = int(opts.get("min_area") or DEFAULT_MIN_AREA)
        try:
            return super().fit(opts, split, out)
        finally:
            del self._min_area

    def run_info(self, opts: dict) -> dict:
        return {"options": {"min_area": int(opts.get("min_area") or DEFAULT_MIN_AREA)}}

    def results(self, model, pairs, spec, classes, min_area: int, batch_size: int = 16, desc: str = "") -> list:
        """A PyTorch model's typed results on `pairs` (the training side's decoding)."""
        from edgetune.tasks.segment.predict import torch_results

        session = self.session(None, self._manifest(classes, spec, min_area))
        return torch_results(model, [p for p, _ in pairs], spec, session, batch_size, desc)

    def evaluate(self, model, split, spec, part="test", batch_size=64, min_area=None) -> dict:
        from edgetune.tasks.segment.metrics import segmentation_metrics

        min_area = min_area or getattr(self, "_min_area", DEFAULT_MIN_AREA)
        results = self.results(model, split.parts[part], spec, split.classes, min_area, min(batch_size, 16))
        return segmentation_metrics(results, [y for _, y in split.parts[part]], split.classes)

    def test_metrics(self, model, run, batch_size: int = 64) -> dict:
        m = self.evaluate(model.eval(), run.split, run.spec, "test", batch_size, _min_area(run))
        return self.headline(m)

    def headline(self, metrics: dict) -> dict:
        from edgetune.tasks.segment.metrics import headline

        return headline(metrics)

    # --- export ------------------------------------------------------------------

    def deploy_module(self, model):
        from edgetune.tasks.segment.model import MaskOutputs

        return model if isinstance(model, MaskOutputs) else MaskOutputs(model)

    def export_checks(self, path, reference, images) -> dict:
        from edgetune.tasks.segment.checks import compare_masks

        return compare_masks(path, reference, images, MIN_PIXEL_AGREEMENT, MIN_DEFECT_IOU, MIN_DEFECT_PIXELS)

    # --- measurement -------------------------------------------------------------

    def manifest(self, run) -> dict:
        return self._manifest(run.classes, run.spec, _min_area(run))

    def _manifest(self, classes, spec, min_area: int) -> dict:
        section = {
            "min_area": int(min_area),
            "mask_size": list(spec.size),
            "mapping": "the whole frame is resized to the network; its mask goes back by nearest neighbour",
        }
        return {"task": self.name, "classes": list(classes), self.name: section}

    def outputs_doc(self, spec) -> dict:
        h, w = spec.size
        return {
            "mask": f"(N, {h}, {w}) uint8 class indices (0: background) at the network's input size",
            "defect_score": "(N) the largest probability of any pixel not being background",
        }

    def results_metrics(self, results, targets, classes) -> dict:
        from edgetune.tasks.segment.metrics import segmentation_metrics

        return segmentation_metrics(results, targets, classes)

    def agreement(self, reference, candidate) -> float | None:
        from edgetune.tasks.segment.metrics import agreement

        return agreement(reference, candidate)

    def gate(self, reference, candidate, targets, classes, max_drop, min_agreement, names):
        from edgetune.tasks.segment.gate import gate

        return gate(reference, candidate, targets, classes, max_drop, names)

    def row_metrics(self, results, targets, classes, reference=None) -> dict:
        m = self.results_metrics(results, targets, classes)
        return {
            **{k: m[k] for k in ("miou", "miou_defects", "pixel_accuracy", "image_auroc", "image_f1", "region_recall")},
            "per_class_iou": {c: v["iou"] for c, v in m["per_class"].items()},
            "n_images": m["n"],
            "agreement": self.agreement(reference, results) if reference is not None else None,
        }

    def parity(self, training, device, precision, max_diff) -> dict:
        """The share of pixels whose class differs, per image (checked against the
        limit for every precision), and whether the image's class (that of its
        largest kept defect area, else background) agrees."""
        import numpy as np

        from edgetune.tasks.segment.metrics import pixel_agreement

        diff = np.array([1.0 - pixel_agreement(a, b) for a, b in zip(training, device)])
        a, b = np.array([_top(r) for r in training]), np.array([_top(r) for r in device])
        return {
            "agreement": float((a == b).mean()) if len(a) else 1.0,
            "per_image": diff,
            "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
            "max_rel_diff": float(diff.max()) if len(diff) else 0.0,
            "decisions": (a, b),
            "diff_checked": True,
            "decides": "image's class (its largest defect area)",
            "output": "share of pixels classed otherwise",
        }

    # --- report ------------------------------------------------------------------

    def report(self, run, part, json_file, batch_size, tta="none") -> dict:
        from edgetune.tasks.segment.report import report

        return report(self, run, part, json_file, batch_size, _min_area(run))


def _min_area(run) -> int:
    return int((run.info.get("options") or {}).get("min_area") or DEFAULT_MIN_AREA)


def _top(result) -> int:
    kept = result.kept_areas()
    return max(kept, key=lambda c: (kept[c], -c)) if kept else 0
