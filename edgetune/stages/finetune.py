"""The `finetune` stage: data source -> split -> pretrained backbone -> fit -> run."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from edgetune import log
from edgetune.data.augment import Augment
from edgetune.data.checks import drop_bad_images
from edgetune.data.dataset import train_val_datasets
from edgetune.data.sources import load_source
from edgetune.data.split import Split, make_split
from edgetune.metrics import headline
from edgetune.models.backbone import create_backbone, resolve_preprocess
from edgetune.models.freeze import check_policy
from edgetune.run import prepare_out, stage_record, write_run
from edgetune.runtime.files import sha256_json
from edgetune.stages.common import train_config
from edgetune.train import distributed
from edgetune.train.evaluate import evaluate_model
from edgetune.train.loop import fit, save_atomic

logger = log.get(__name__)


def split_for(opts: dict, out: Path) -> Split:
    """The run's split: reused from an interrupted run, else made afresh."""
    path = out / "split.json"
    if opts.get("resume") and path.exists():
        return Split.load(path)
    source = drop_bad_images(load_source(opts["data"]), opts["skip_bad"], logger)
    split = make_split(
        source,
        opts["seed"] if opts.get("split_seed") is None else opts["split_seed"],
        opts["val_frac"],
        opts["test_frac"],
    )
    split.save(path)
    counts = split.counts()
    logger.info(
        "Data %s: %s; train/val/test = %d/%d/%d images.",
        opts["data"],
        ", ".join(f"{c} {sum(n[i] for n in counts.values())}" for i, c in enumerate(split.classes)),
        *(len(split.parts[k]) for k in ("train", "val", "test")),
    )
    return split


def run_finetune(opts: dict, config_record: dict) -> Path:
    """Fine-tune per `opts` (the finetune command's options); returns the run dir."""
    started = time.time()
    distributed.setup(opts.get("device") or "auto")
    # rank 0 checks --out and makes (or reloads) the split; every rank trains on that split
    out = distributed.on_main(
        lambda: prepare_out(Path(opts["out"]), opts.get("resume", False), opts.get("force", False))
    )
    check_policy(opts["freeze"])
    split = Split.from_dict(
        distributed.on_main(lambda: split_for(opts, out).to_dict()), opts["data"]
    )  # paths found where --data is here
    torch.manual_seed(opts["seed"])  # the new head's (or a random model's) initial weights
    model = create_backbone(
        opts["model"],
        len(split.classes),
        pretrained=opts["pretrained"],
        weights=opts.get("weights"),
        drop_rate=opts.get("drop_rate") or 0.0,
        img_size=opts.get("img_size"),
    )
    spec = resolve_preprocess(model, opts.get("img_size"))
    augment: Augment = opts["augment"]
    cfg = train_config(opts)
    logger.info(
        "Fine-tuning %s at %dx%d on %s (freeze %s, %d epochs).",
        opts["model"],
        *spec.size,
        cfg.device if cfg.device != "auto" else "auto device",
        cfg.freeze,
        cfg.epochs,
    )
    result = fit(
        model,
        *train_val_datasets(split, spec, augment, opts.get("soft_labels", False)),
        split.classes,
        cfg,
        out / "ckpt",
        resume=opts.get("resume", False),
        desc="finetune",
    )
    model.cpu().eval()
    test = evaluate_model(model, split, spec, "test", batch_size=cfg.batch_size)
    metrics = {
        "best_epoch": result.best_epoch,
        "val_best": result.best_metric,
        "kept_epoch": result.kept_epoch,
        "epochs": result.history,
        "test": headline(test),
    }
    record = {
        **stage_record("finetune", config_record, sha256_json(split.to_dict()), metrics, started),
        **distributed.batch_record(cfg.batch_size),
    }
    if distributed.is_main():
        save_atomic(model.state_dict(), out / "model.pt")
        write_run(
            out,
            stage="float",
            model=opts["model"],
            classes=split.classes,
            spec=spec,
            split=split,
            history=[record],
            config=config_record,
            weights="offline/hub ImageNet" if opts["pretrained"] and not opts.get("weights") else opts.get("weights"),
        )
    distributed.barrier()  # the run is final when every rank has finished with it
    logger.info(
        "Fine-tuned %s: test accuracy %.4f, F1 %.4f (weights of epoch %d; best on validation: %d). Run: %s",
        opts["model"],
        test["accuracy"],
        test["f1"],
        result.kept_epoch,
        result.best_epoch,
        out,
    )
    return out
