"""The build machine's half of a task, over one interface per layer. A task
subclasses `Task`, sets what it is and implements what differs; the defaults are
those of a model trained by the training loop (classification, and any task like
it), so such a task writes its model, hooks, datasets, metrics and export.

    data      recognises(spec), source(spec, opts): the targets a data source gives
    model     create_model, load_model(run), architecture(run), prune_ignored
    training  fit(opts, split, out) (default: the training loop with `hooks`,
              `datasets`), evaluate(model, split, spec, part)
    export    export(run, out, ...): one ONNX graph whose outputs are the runtime
              half's `outputs` (default: `deploy_module` traced, `export_checks`)
    measure   results_metrics, headline, gate, parity, row_metrics/columns, align
    report    report(run, part, ...): the `evaluate` command's files
    bundle    manifest(run): the manifest's task keys

The torch-free half (`session`, a `TaskSession`) reads the graph's outputs on the
device; the build half reads them through the same class, so both sides agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import log

logger = log.get(__name__)


@dataclass
class Fitted:
    """What fitting a task's model on a split gives the run it writes."""

    model: Any  # torch.nn.Module: its state dict is the run's model.pt
    spec: Any  # PreprocessSpec
    split: Any  # Split, as the run keeps it (the task's view of it)
    metrics: dict  # the stage's metrics ("test" among them)
    stage: str = "finetune"  # the history record's stage name
    info: dict = field(default_factory=dict)  # the task's own run.json keys
    batch_size: int | None = None  # trained with the loop: images per process and step


class Task:
    name = "?"
    help = ""  # what the task learns, for --task's help
    session: type  # its TaskSession subclass (the torch-free half)
    metric = "accuracy"  # what the gate compares: a key of `results_metrics`
    metric_label = "accuracy"  # the metric as people read it
    lower_is_better = False
    default_max_drop = 0.5  # the gate's limit, in points of `metric`, when none is given
    always_gated = False  # build gates the bundles even without --max-drop
    trains = True  # fitted by the training loop, so prune and quantize apply
    distributed = True  # under torchrun, every rank fits (else rank 0 alone, the others wait)
    supports_tta = False  # evaluate --tta
    options: tuple = ()  # click options the task adds to `finetune` (and the config file)
    overrides: dict[str, str] = {}  # those options `build` overrides too: name -> help
    data_help = "a folder with one sub-folder per class, a CSV file with columns path,label, or 'elpv'"

    # --- data ------------------------------------------------------------------

    def recognises(self, spec: str) -> bool:
        """Does `--data spec` look like data this task can learn from (cheap: the layout)?"""
        from edgetune.data.sources import is_class_source

        return is_class_source(spec)

    def source(self, spec: str, opts: dict):
        """The data source's images and targets (`edgetune.data.sources.Source`)."""
        from edgetune.data.sources import load_source

        return load_source(spec)

    # --- the model -------------------------------------------------------------

    def check(self, opts: dict) -> None:
        """Refuse options this task cannot use, before any data is read."""

    def create_model(
        self,
        name: str,
        classes: list[str],
        img_size=None,
        pretrained: bool = True,
        weights=None,
        opts: dict | None = None,
    ):
        """A fresh model of backbone `name` for `classes` at input size `img_size`
        (None: the backbone's own), pretrained as asked; `opts`: finetune's options."""
        raise NotImplementedError

    def architecture(self, run):
        """The run's float architecture (pruned layers resized), weights not loaded."""
        model = self.create_model(
            run.model_name, run.classes, tuple(run.spec.size), False, opts=run.info.get("options")
        )
        if run.info.get("arch"):
            from edgetune.compress.shapes import apply_shapes

            apply_shapes(model, run.info["arch"])
        return model

    def load_model(self, run, device: str = "cpu"):
        """The run's trained model, rebuilt from its records (never an unpickled module)."""
        import torch

        model = self.architecture(run)
        state = torch.load(run.dir / "model.pt", map_location="cpu", weights_only=True)
        if run.info.get("quant"):
            from edgetune.compress.quantize import restore_quantized

            model = restore_quantized(model, run, state)
        else:
            model.load_state_dict(state)
        return model.to(device).eval()

    def prune_ignored(self, model) -> list:
        """Layers pruning leaves alone (the prediction head)."""
        return []

    # --- training ----------------------------------------------------------------

    def hooks(self, classes: list[str], cfg, train_set=None):
        """The training loop's `TrainHooks` for this task."""
        raise NotImplementedError

    def datasets(self, split, spec, opts: dict):
        """(train, validation) datasets of the split, training augmentation per `opts`."""
        raise NotImplementedError

    def eval_loader(self, pairs: list, spec, batch_size: int):
        """A loader of (image, target) batches over `pairs`, as evaluation sees them."""
        from edgetune.data.dataset import eval_loader
        from edgetune.data.transforms import EvalTransform

        return eval_loader(pairs, EvalTransform(spec), batch_size)

    def fit(self, opts: dict, split, out: Path) -> Fitted:
        """Fine-tune a pretrained backbone on `split` with the training loop."""
        import torch

        from edgetune.models.backbone import resolve_preprocess
        from edgetune.train.loop import fit, train_config

        torch.manual_seed(opts["seed"])  # the new head's (or a random model's) initial weights
        model = self.create_model(
            opts["model"], split.classes, opts.get("img_size"), opts["pretrained"], opts.get("weights"), opts
        )
        spec = resolve_preprocess(model, opts.get("img_size"))
        cfg = train_config(opts)
        device = cfg.device if cfg.device != "auto" else "auto device"
        logger.info(
            "Fine-tuning %s at %dx%d on %s (freeze %s, %d epochs).",
            opts["model"],
            *spec.size,
            device,
            cfg.freeze,
            cfg.epochs,
        )
        train, val = self.datasets(split, spec, opts)
        hooks = self.hooks(split.classes, cfg, train)
        result = fit(model, train, val, hooks, cfg, out / "ckpt", resume=opts.get("resume", False), desc="finetune")
        model.cpu().eval()
        test = self.evaluate(model, split, spec, "test", cfg.batch_size)
        metrics = {
            "best_epoch": result.best_epoch,
            "val_best": result.best_metric,
            "kept_epoch": result.kept_epoch,
            "epochs": result.history,
            "test": self.headline(test),
        }
        logger.info(
            "Fine-tuned %s: test %s (weights of epoch %d; best on validation: %d).",
            opts["model"],
            self.session.headline(test),
            result.kept_epoch,
            result.best_epoch,
        )
        return Fitted(model, spec, split, metrics, info=self.run_info(opts), batch_size=cfg.batch_size)

    def run_info(self, opts: dict) -> dict:
        """The task's own run.json keys of a run fitted with `opts`."""
        return {}

    def evaluate(self, model, split, spec, part: str = "test", batch_size: int = 64) -> dict:
        """Full metrics of a PyTorch model on a part of the split (training's decoding)."""
        raise NotImplementedError

    def headline(self, metrics: dict) -> dict:
        """What a run or bundle records of the full metrics (no per-image detail)."""
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}

    def artifact_metrics(self, metrics: dict) -> dict:
        """What a bundle records of a compiled artifact's test metrics."""
        return self.headline(metrics)

    def test_metrics(self, model, run, batch_size: int = 64) -> dict:
        return self.headline(self.evaluate(model.eval(), run.split, run.spec, "test", batch_size))

    # --- export ------------------------------------------------------------------

    def deploy_module(self, model):
        """The module an export traces: the model with what the graph adds (decoding)."""
        return model

    def export(
        self,
        run,
        out: Path,
        precision: str = "int8",
        opset: int = 17,
        check: bool = True,
        activations: str = "keep",
        shared: dict | None = None,
        options: dict | None = None,
        check_images: int | None = None,
    ) -> dict:
        """Write `run`'s model to `out` as one ONNX graph with the runtime half's
        outputs, check it, and return the export's record. `shared`: a dict the
        export stages of one build share (work done once for every variant);
        `options`: the export stage's values (with `export_options`)."""
        from edgetune.export.onnx import export_trained

        return export_trained(self, run, out, precision, opset, check, activations, check_images)

    def export_options(self, options: dict) -> dict:
        """Settings of other stages that this task's export takes (`options`: each
        stage's StageOptions): hashed into the build's export stages."""
        return {}

    def config_warning(self, config: dict) -> str | None:
        """A warning for config sections or keys a build of this task ignores."""
        return None

    def export_checks(self, path: Path, reference, images) -> dict:
        """Checks of an exported graph against the PyTorch module it came from, on
        preprocessed images; raises EdgetuneError when they fail."""
        return {}

    # --- measurement -------------------------------------------------------------

    def manifest(self, run) -> dict:
        """The keys a bundle's manifest (and the run's stand-in for it) holds for this task."""
        return {"task": self.name, "classes": list(run.classes)}

    def outputs_doc(self, spec) -> dict | None:
        """The manifest's note of each graph output, where more than `logits`-like."""
        return None

    def wrap(self, session, run, artifact: dict | None = None):
        """`session` (any runtime's, or a PyTorch model's) read as `run`'s task reads
        it; with a bundle `artifact`, under that artifact's own task values."""
        from edgetune.runtime.bundle import artifact_manifest

        return self.session(session, artifact_manifest(self.manifest(run), artifact or {}))

    def artifact_section(self, session, run) -> dict | None:
        """Task values a compiled artifact chooses for itself on `run`'s validation
        images (through the runtime `session`), overriding the run's in the
        manifest's task section; None: the run's serve every artifact."""
        return None

    def results_metrics(self, results: list, targets: list, classes: list[str]) -> dict:
        """Full metrics of typed results (a session's) against the targets."""
        raise NotImplementedError

    def align(self, pairs: list, source_classes: list[str], run_like: dict, who: str) -> list:
        """Targets labelled with `source_classes` re-expressed in the model's terms
        (`run_like`: its manifest keys); a clear error where they cannot be."""
        from edgetune.errors import EdgetuneError

        classes = list(run_like["classes"])
        if classes == list(source_classes):
            return pairs
        if sorted(classes) != sorted(source_classes):
            raise EdgetuneError(
                f"{who} predicts classes {classes}, but the images are labelled {list(source_classes)}. Give --data "
                "with the classes the model was trained on."
            )
        index = {c: i for i, c in enumerate(classes)}
        return [(p, index[source_classes[y]]) for p, y in pairs]

    def gate(
        self,
        reference: list,
        candidate: list,
        targets: list,
        classes: list[str],
        max_drop: float,
        min_agreement: float,
        names: dict,
    ):
        """The CI gate of candidate results against reference results (`edgetune.tasks.gate`)."""
        from edgetune.tasks.gate import metric_gate

        return metric_gate(self, reference, candidate, targets, classes, max_drop, names)

    def agreement(self, reference: list, candidate: list) -> float | None:
        """The share of images on which two models decide alike, where that means something."""
        return None

    columns: tuple = (("accuracy", "accuracy", ".4f"), ("F1", "f1", ".4f"))  # bench's metric columns

    def row_metrics(self, results: list, targets: list, classes: list[str], reference: list | None = None) -> dict:
        """The metric fields of a bench row."""
        m = self.results_metrics(results, targets, classes)
        row = {key: m.get(key) for _, key, _ in self.columns}
        row.update(
            n_images=len(targets), agreement=self.agreement(reference, results) if reference is not None else None
        )
        return row

    def parity(self, training: list, device: list, precision: str, max_diff: float | None) -> dict:
        """How far the device path's results are from the training path's (verify)."""
        raise NotImplementedError

    # --- report ------------------------------------------------------------------

    def report(self, run, part: str, json_file: Path | None, batch_size: int, tta: str = "none") -> dict:
        """The `evaluate` command on a run: metrics (RUN/eval_PART.json), files for people."""
        raise NotImplementedError
