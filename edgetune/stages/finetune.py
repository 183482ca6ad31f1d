"""The `finetune` stage: data source -> split -> the task's model fitted on it ->
run. Every task goes through this driver; what fitting means (the training loop
on a pretrained backbone, a memory bank of good parts, ...) is the task's."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from edgetune import log, tasks, torchrun
from edgetune.data.checks import drop_bad_images
from edgetune.data.split import Split, make_split
from edgetune.errors import EdgetuneError
from edgetune.run import prepare_out, stage_record, write_run
from edgetune.runtime.files import sha256_json
from edgetune.train import distributed
from edgetune.train.loop import save_atomic

logger = log.get(__name__)


def check_feeds(task, spec: str) -> None:
    """Refuse, before anything trains, data whose layout the task cannot learn
    from, naming the tasks it looks like data for."""
    if not Path(spec).exists() or task.recognises(spec):
        return  # a missing path is named by the task's source
    others = [n for n, t in tasks.loaded().items() if n != task.name and t.recognises(spec)]
    raise EdgetuneError(
        f"--data {spec} is not data for --task {task.name}, which learns from {task.data_help}."
        + (f" It looks like data for --task {' or '.join(others)}." if others else "")
    )


def split_for(task, opts: dict, out: Path) -> Split:
    """The run's split: reused from an interrupted run, else made afresh."""
    path = out / "split.json"
    if opts.get("resume") and path.exists():
        return Split.load(path)
    spec = str(opts["data"])
    check_feeds(task, spec)
    source = drop_bad_images(task.source(spec, opts), opts.get("skip_bad", False), logger)
    split = make_split(
        source,
        opts.get("seed", 0) if opts.get("split_seed") is None else opts["split_seed"],
        opts.get("val_frac", 0.15),
        opts.get("test_frac", 0.25),
    )
    split.save(path)
    groups = Counter(source.group_name(it.keys[1]) for it in source.items)
    logger.info(
        "Data %s: %s; train/val/test = %d/%d/%d images.",
        spec,
        ", ".join(f"{g} {n}" for g, n in groups.items()),
        *(len(split.parts[k]) for k in ("train", "val", "test")),
    )
    return split


def run_finetune(opts: dict, config_record: dict) -> Path:
    """`finetune` per `opts` (the command's options); returns the run dir."""
    started = time.time()
    task = tasks.get(opts.get("task") or tasks.DEFAULT)
    task.check(opts)
    if not task.distributed and not torchrun.is_main():
        return Path(opts["out"])  # fitted by one process: under torchrun the other ranks leave it to rank 0
    if task.distributed:
        distributed.setup(opts.get("device") or "auto")
    # rank 0 checks --out and makes (or reloads) the split; every rank fits on that split
    out = distributed.on_main(
        lambda: prepare_out(Path(opts["out"]), opts.get("resume", False), opts.get("force", False))
    )
    split = Split.from_dict(distributed.on_main(lambda: split_for(task, opts, out).to_dict()), opts["data"])
    fitted = task.fit(opts, split, out)
    record = stage_record(fitted.stage, config_record, sha256_json(fitted.split.to_dict()), fitted.metrics, started)
    if fitted.batch_size is not None:
        record.update(distributed.batch_record(fitted.batch_size))
    if distributed.is_main():
        save_atomic(fitted.model.state_dict(), out / "model.pt")
        weights = "offline/hub ImageNet" if opts.get("pretrained") and not opts.get("weights") else opts.get("weights")
        write_run(
            out,
            stage="float",
            task=task.name,
            model=opts["model"],
            classes=fitted.split.classes,
            spec=fitted.spec,
            split=fitted.split,
            history=[record],
            config=config_record,
            weights=str(weights) if weights else weights,
            **fitted.info,
        )
    distributed.barrier()  # the run is final when every rank has finished with it
    logger.info("Run: %s", out)
    return out
