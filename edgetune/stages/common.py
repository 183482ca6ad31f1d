"""What the training stages share: their options as a `TrainConfig`, the parent
run, the datasets of its split, writing the finished stage (model.pt, metrics,
run.json with the history), and `TrainingStage`, the build's driver around them."""

from __future__ import annotations

from pathlib import Path

import torch

from edgetune import log
from edgetune.data.augment import DEFAULT_AUGMENT, Augment
from edgetune.errors import EdgetuneError
from edgetune.run import Run, check_order, load_run, prepare_out, stage_record, write_run
from edgetune.runtime.files import sha256_file, sha256_json
from edgetune.stages.base import Result, Stage, StageOptions, fresh_dir
from edgetune.train import distributed
from edgetune.train.loop import save_atomic, train_config  # noqa: F401 - the stages' settings of the loop

logger = log.get(__name__)


def begin(opts: dict, stage: str, config_record: dict) -> tuple[Run, Path]:
    """The parent run (checked for pipeline order) and the prepared --out. Without
    --augment, the stage trains with the augmentations its parent trained with (a
    recovery or QAT that augments otherwise trains on other images than the model
    learnt from); `opts` and the record get the resolved value. Under torchrun
    every rank reads the parent run; rank 0 alone prepares --out."""
    distributed.setup(opts.get("device") or "auto")
    parent = load_run(opts["run_dir"])
    if not parent.task_impl.trains:
        raise EdgetuneError(
            f"{parent.dir} is a {parent.task} run, fitted without the training loop: `{stage}` does not apply to it. "
            "Build or export it as it is."
        )
    check_order(parent, stage)
    out = distributed.on_main(
        lambda: prepare_out(Path(opts["out"]), opts.get("resume", False), opts.get("force", False))
    )
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


def datasets(run: Run, opts: dict):
    return run.task_impl.datasets(run.split, run.spec, opts)


def hooks(run: Run, cfg, train_set):
    return run.task_impl.hooks(run.classes, cfg, train_set)


def teacher(opts: dict, parent: Run) -> torch.nn.Module | None:
    """The distillation teacher: --teacher RUN_DIR, else the parent run's model;
    None when --distill is off."""
    if not opts.get("distill"):
        return None
    run = load_run(opts["teacher"]) if opts.get("teacher") else parent
    if run.classes != parent.classes:
        raise EdgetuneError(
            f"--teacher {run.dir}: its classes {run.classes} differ from {parent.classes} of {parent.dir}. "
            "Give a run trained on the same data source."
        )
    logger.info("Distilling from %s (%s, weight %.2f).", run.dir, run.stage, opts["distill"])
    return run.build_model()


def test_metrics(model: torch.nn.Module, run: Run, batch_size: int = 64) -> dict:
    return run.task_impl.test_metrics(model, run, batch_size)


def finish(
    out: Path,
    parent: Run,
    stage: str,
    model: torch.nn.Module,
    config: dict,
    metrics: dict,
    started: float,
    trained: bool = True,
    **extra,
) -> None:
    """Save the weights and write run.json (last: it marks the run finished); under
    torchrun rank 0 writes and every rank waits for it. A stage that `trained`
    records its scale-out (world size, batch sizes)."""
    if distributed.is_main():
        save_atomic(model.state_dict(), out / "model.pt")
        inputs = sha256_json({"parent_model": sha256_file(parent.dir / "model.pt"), "config": config})
        record = stage_record(stage, config, inputs, metrics, started)
        if trained:
            record.update(distributed.batch_record(config.get("batch-size") or config.get("batch_size")))
        history = [*parent.info.get("history", []), record]
        extra.setdefault("arch", parent.info.get("arch"))
        if parent.info.get("options"):
            extra.setdefault("options", parent.info["options"])  # the task's own model options
        write_run(
            out,
            stage=stage,
            task=parent.task,
            model=parent.model_name,
            classes=parent.classes,
            spec=parent.spec,
            split=parent.split,
            history=history,
            config=config,
            parent=str(parent.dir.resolve()),
            **extra,
        )
    distributed.barrier()


class TrainingStage(Stage):
    """A build's fine-tune, prune or quantize stage: the driver `train(values,
    record)` (the same function as the command's) in OUT/NAME, which it keeps
    when resuming. Its input, if any, is the run it trains from."""

    distributed = True
    versioned = False

    def __init__(self, name: str, train, options: StageOptions, inputs: tuple[str, ...] = (), source_key: str = ""):
        self.name, self.train, self.options, self.inputs = name, train, options, inputs
        self.source_key = source_key  # fine-tuning: the data's fingerprint

    def config(self) -> dict:
        return self.options.hashed()

    def key(self, upstream: list[str]) -> str:
        return super().key(upstream or [self.source_key])

    def run(self, inputs: list[Result], out: Path, resume: bool) -> dict:
        d = out / self.name

        def prepare() -> bool:  # on rank 0
            return (fresh_dir(d, resume) / "ckpt" / "last.pt").exists() and resume

        values = {**self.options.values, "out": d, "resume": distributed.on_main(prepare), "force": True}
        if inputs:
            values["run_dir"] = out / inputs[0].output["run_dir"]
        self.train(values, dict(self.options.record))
        return {"run_dir": self.name}  # relative to OUT: a build directory can be moved
