"""What prune and quantize share: the parent run, the datasets of its split, and
writing the finished stage (model.pt, metrics, run.json with the history)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgetune import log
from edgetune.data.augment import DEFAULT_AUGMENT, Augment
from edgetune.data.dataset import ImageDataset, train_val_datasets
from edgetune.errors import EdgetuneError
from edgetune.evaluate import evaluate_model
from edgetune.run import Run, check_order, load_run, prepare_out, stage_record, write_run
from edgetune.runtime.files import sha256_file, sha256_json

logger = log.get(__name__)


def begin(opts: dict, stage: str, config_record: dict) -> tuple[Run, Path]:
    """The parent run (checked for pipeline order) and the prepared --out. Without
    --augment, the stage trains with the augmentations its parent trained with (a
    recovery or QAT that augments otherwise trains on other images than the model
    learnt from); `opts` and the record get the resolved value."""
    parent = load_run(opts["run_dir"])
    check_order(parent, stage)
    out = prepare_out(Path(opts["out"]), opts.get("resume", False), opts.get("force", False))
    if opts.get("augment") is None:
        opts["augment"] = inherited_augment(parent)
        config_record["augment"] = str(opts["augment"])
    return parent, out


def inherited_augment(run: Run) -> Augment:
    """The augmentations of the latest stage in `run`'s history that recorded some."""
    for rec in reversed(run.info.get("history", [])):
        value = (rec.get("config") or {}).get("augment")
        if value is not None:
            return Augment.parse(value)
    return Augment.parse(DEFAULT_AUGMENT)


def datasets(run: Run, opts: dict) -> tuple[ImageDataset, ImageDataset]:
    return train_val_datasets(run.split, run.spec, opts["augment"], opts.get("soft_labels", False))


def teacher(opts: dict, parent: Run) -> torch.nn.Module | None:
    """The distillation teacher: --teacher RUN_DIR, else the parent run's model;
    None when --distill is off."""
    if not opts.get("distill"):
        return None
    run = load_run(opts["teacher"]) if opts.get("teacher") else parent
    if run.classes != parent.classes:
        raise EdgetuneError(f"--teacher {run.dir}: its classes {run.classes} differ from {parent.classes} of {parent.dir}. "
                            "Give a run trained on the same data source.")
    logger.info("Distilling from %s (%s, weight %.2f).", run.dir, run.stage, opts["distill"])
    return run.build_model()


def headline(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "f1", "roc_auc") if k in m}


def test_metrics(model: torch.nn.Module, run: Run, batch_size: int = 64) -> dict:
    return headline(evaluate_model(model.eval(), run.split, run.spec, "test", batch_size=batch_size))


def finish(out: Path, parent: Run, stage: str, model: torch.nn.Module, config: dict, metrics: dict, started: float, **extra) -> None:
    """Save the weights and write run.json (last: it marks the run finished)."""
    from edgetune.train.loop import save_atomic

    save_atomic(model.state_dict(), out / "model.pt")
    inputs = sha256_json({"parent_model": sha256_file(parent.dir / "model.pt"), "config": config})
    history = [*parent.info.get("history", []), stage_record(stage, config, inputs, metrics, started)]
    extra.setdefault("arch", parent.info.get("arch"))
    write_run(out, stage=stage, model=parent.model_name, classes=parent.classes, spec=parent.spec, split=parent.split, history=history,
              config=config, parent=str(parent.dir.resolve()), **extra)
