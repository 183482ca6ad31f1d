"""Anomaly detection from good parts only: PatchCore fitted on the `--normal`
class's training images (no training loop: no pruning, no QAT; INT8 by
post-training quantization of the feature extractor at export), one graph with
outputs `score` and `map`, gated on image AUROC."""

from __future__ import annotations

import click
import numpy as np

from edgetune.runtime.tasks.anomaly import CLASSES, AnomalySession
from edgetune.tasks.base import Task


class Anomaly(Task):
    name = "anomaly"
    help = (
        "fit PatchCore on the --normal class alone and flag whatever differs from it, with a heat map (training "
        "options such as --epochs do not apply)."
    )
    session = AnomalySession
    metric = "auroc"
    metric_label = "image AUROC"
    default_max_drop = 1.0
    always_gated = True  # INT8 moves nearest-neighbour scores: every build is gated
    trains = False
    distributed = False  # fitting is one pass over the normal images: rank 0 alone under torchrun
    columns = (("AUROC", "auroc", ".4f"), ("false alarms", "false_alarm_rate", ".2%"), ("F1", "f1", ".4f"))
    options = (
        click.option(
            "--normal",
            metavar="CLASS",
            help="--task anomaly: the class of good parts; only its training images are used.",
        ),
        click.option(
            "--coreset",
            type=click.FloatRange(0, 1, min_open=True),
            default=0.1,
            show_default=True,
            help="--task anomaly: fraction of the normal images' patch features kept in the memory bank (greedy "
            "k-center coreset), at most as many rows as make the search cost what the backbone costs.",
        ),
        click.option(
            "--bank-rows",
            type=click.IntRange(1),
            help="--task anomaly: rows of the memory bank, instead of --coreset's fraction and the cost cap; the "
            "search's time a frame grows with them.",
        ),
        click.option(
            "--image-score/--no-image-score",
            default=False,
            show_default=True,
            help="--task anomaly: add an image-level score to the patch score: the deepest stage's channel statistics "
            "against the nearest good image's. It catches tile-wide changes and thin cracks (magnetic tiles: image "
            "AUROC 0.922 -> 0.952), puts the backbone's last stages into the graph, and moves more under INT8.",
        ),
        click.option(
            "--patch-features",
            type=click.Choice(["fine", "coarse"]),
            default="fine",
            show_default=True,
            help="--task anomaly: the patch embedding. fine: PatchCore's, the stride-8 and stride-16 stages each "
            "pooled 3x3 (sharper heat maps); coarse: the stride-16 stage alone, upsampled to the same grid (higher "
            "image AUROC on magnetic tiles and ELPV, a coarser map).",
        ),
        click.option(
            "--max-bank-mb",
            type=click.FloatRange(0, min_open=True),
            default=256.0,
            show_default=True,
            help="--task anomaly: refuse a memory bank larger than this (it ships in every bundle and sets the search "
            "cost).",
        ),
        click.option(
            "--max-false-alarm",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=0.01,
            show_default=True,
            help="--task anomaly, when validation has no labelled anomalies: the threshold lets this share of normal "
            "images raise an alarm.",
        ),
    )
    overrides = {"normal": "Override finetune's --normal: the class of good parts (--task anomaly)."}

    data_help = (
        "a folder with one sub-folder per class (the --normal one among them, alone if no defect is labelled yet), "
        "a path,label CSV, 'elpv', a plain folder of images of good parts, or images with defect masks (class "
        "folders with NAME.png beside each image, or images/ + masks/: pixel AUROC and PRO are then reported)"
    )

    def recognises(self, spec: str) -> bool:
        from edgetune.data.masks import is_mask_source
        from edgetune.data.sources import is_class_source, is_image_folder

        return is_mask_source(spec) or is_class_source(spec) or is_image_folder(spec)

    def source(self, spec: str, opts: dict):
        """Class-labelled images (the --normal class may be the only one), images
        with defect masks, or a plain folder of images, all of them normal."""
        from edgetune.data.masks import is_mask_source
        from edgetune.data.sources import image_folder_source, is_image_folder, load_source
        from edgetune.tasks.anomaly.data import mask_layout_source

        if is_mask_source(spec):
            return mask_layout_source(spec, opts.get("normal"))
        if is_image_folder(spec):
            return image_folder_source(spec, opts.get("normal") or "good")
        return load_source(spec, min_classes=1)

    def check(self, opts: dict) -> None:
        from edgetune.tasks.anomaly.patchcore import feature_indices

        # a ViT, or a CNN without the patch features' stages, is refused before any data is read
        feature_indices(opts["model"], opts.get("patch_features") or "fine")

    def fit(self, opts, split, out):
        from edgetune.tasks.anomaly.fit import fit_patchcore

        return fit_patchcore(opts, split, out)

    def load_model(self, run, device: str = "cpu"):
        from edgetune.tasks.anomaly.fit import load_patchcore

        return load_patchcore(run).to(device)

    def architecture(self, run):
        return self.load_model(run)

    # --- export ------------------------------------------------------------------

    def export(
        self,
        run,
        out,
        precision="int8",
        opset=17,
        check=True,
        activations="keep",
        shared=None,
        options=None,
        check_images=None,
    ):
        from edgetune.tasks.anomaly.export import export_variant

        options = options or {}
        # A build says whether a target needs signed activations; alone, an export for
        # ONNX Runtime (uint8) does not, and one kept as quantized may go to TensorRT.
        ptq = options.get("quantize_activations") or ("auto" if activations == "uint8" else "int8")
        return export_variant(
            run,
            out.parent,
            precision,
            activations,
            opset,
            options.get("calibration") or "default",
            options.get("calib_count"),
            cache=shared,
            path=out,
            check=check,
            quantize_activations=ptq,
        )

    def export_options(self, options: dict) -> dict:
        q = options["quantize"].values
        return {
            "calibration": q.get("calibration") or "default",
            "calib_count": q.get("calib_count"),
            "quantize_activations": q.get("activations") or "auto",
        }

    def config_warning(self, config: dict) -> str | None:
        quant = [f"quantize.{k}" for k in (config.get("quantize") or {}) if k not in ("calibration", "calib-count")]
        ignored = [k for k in ("prune",) if k in config] + quant
        if not ignored:
            return None
        return (
            f"Config key(s) {', '.join(ignored)} do not apply to --task anomaly (PatchCore is fitted, not trained; "
            "INT8 comes from post-training quantization in the export stage, calibrated with quantize.calibration "
            "and quantize.calib-count)."
        )

    # --- measurement -------------------------------------------------------------

    def manifest(self, run) -> dict:
        section = {k: v for k, v in run.info["anomaly"].items() if k not in ("feature_indices", "patch_features")}
        return {"task": self.name, "classes": list(run.classes), self.name: section}

    def artifact_section(self, session, run) -> dict:
        """Each artifact's threshold and normalisation, chosen on the validation
        images' scores through that artifact with the fit's rule: INT8 (and bf16)
        move every nearest-neighbour distance, so the float model's raw threshold
        would flag another share of good parts there."""
        from edgetune.runtime.preprocess import preprocess, read_image
        from edgetune.runtime.tasks.anomaly import SCORE, Normalisation
        from edgetune.tasks.anomaly.fit import DEFAULTS, anomalous_labels
        from edgetune.tasks.anomaly.metrics import anomaly_threshold

        val = run.split.parts["val"]
        scores = []
        for i in range(0, len(val), 16):
            batch = preprocess([read_image(p) for p, _ in val[i : i + 16]], run.spec)
            scores.append(np.asarray(session.run_outputs(batch)[SCORE], dtype=np.float64).reshape(-1))
        scores = np.concatenate(scores)
        fitted = run.info["history"][0].get("config") or {}
        limit = float(fitted.get("max-false-alarm") or DEFAULTS["max_false_alarm"])
        threshold, rule = anomaly_threshold(anomalous_labels(val), scores, limit)
        info = run.info["anomaly"]
        norm = Normalisation.from_scores(threshold, scores, info["map_size"], rule, info.get("normal_class", ""))
        return {k: v for k, v in norm.to_dict().items() if k in ("threshold_raw", "center", "scale", "rule")}

    def outputs_doc(self, spec) -> dict:
        h, w = spec.size
        return {"score": "(N) raw image scores", "map": f"(N, {h}, {w}) raw patch-score maps"}

    def results_metrics(self, results, targets, classes) -> dict:
        import numpy as np

        from edgetune.runtime.tasks.anomaly import THRESHOLD
        from edgetune.tasks.anomaly.metrics import anomaly_metrics

        return anomaly_metrics(np.asarray(targets) == 1, np.array([r.score for r in results]), THRESHOLD)

    def align(self, pairs, source_classes, run_like, who) -> list:
        from edgetune.errors import EdgetuneError

        if list(source_classes) == CLASSES:
            return pairs
        normal = (run_like.get(self.name) or {}).get("normal_class")
        if normal not in source_classes:
            raise EdgetuneError(
                f"{who} was fitted on normal class '{normal}', but the images are labelled {list(source_classes)}. "
                f"Give --data with a '{normal}' class (every other class counts as anomalous)."
            )
        n = list(source_classes).index(normal)
        return [(p, int(y != n)) for p, y in pairs]

    def agreement(self, reference, candidate) -> float | None:
        same = [a.anomalous == b.anomalous for a, b in zip(reference, candidate)]
        return float(sum(same) / len(same)) if same else 1.0

    def gate(self, reference, candidate, targets, classes, max_drop, min_agreement, names):
        from edgetune.tasks.anomaly.gate import gate

        return gate(self, reference, candidate, targets, max_drop, names)

    def row_metrics(self, results, targets, classes, reference=None) -> dict:
        m = self.results_metrics(results, targets, classes)
        return {
            "accuracy": m["accuracy"],
            "f1": m["f1"],
            "auroc": m["auroc"],
            "aupr": m["aupr"],
            "false_alarm_rate": m["false_alarm_rate"],
            "n_images": m["n"],
            "agreement": self.agreement(reference, results) if reference is not None else None,
        }

    def parity(self, training, device, precision, max_diff) -> dict:
        """The flags' agreement; the normalised scores' difference, checked for
        float artifacts (or an INT8 one given --max-diff): a nearest-neighbour
        distance adds up quantization error over every feature, and normal images
        score alike, so INT8 reorders them. The scores' rank correlation is reported."""
        import numpy as np
        from scipy.stats import spearmanr

        a, b = np.array([r.score for r in training]), np.array([r.score for r in device])
        diff = np.abs(a - b)
        flags_a, flags_b = np.array([r.anomalous for r in training]), np.array([r.anomalous for r in device])
        return {
            "agreement": float((flags_a == flags_b).mean()),
            "per_image": diff,
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max() / max(float(np.abs(a).max()), 1e-6)),
            "decisions": (flags_a.astype(int), flags_b.astype(int)),
            "spearman": float(spearmanr(a, b).statistic) if len(a) > 2 else 1.0,
            "diff_checked": precision != "int8" or max_diff is not None,
            "decides": "anomalous flag",
            "output": "normalised score",
        }

    def report(self, run, part, json_file, batch_size, tta="none") -> dict:
        from edgetune.tasks.anomaly.report import report

        return report(run, part, json_file, batch_size)
