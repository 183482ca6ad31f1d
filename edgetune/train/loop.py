"""THE training loop. Fine-tuning, pruning recovery and quantization-aware
training all run through `fit`.

Resumable: every finished epoch writes `last.pt` atomically (weights, optimizer,
scheduler, history); data order and augmentation are seeded per epoch, so a resumed
run replays exactly the epochs it lost. Under `torchrun` (see distributed.py) it
trains a DistributedDataParallel model, each rank on its DistributedSampler share of
the training images (`batch_size` images per rank and step: the global batch is
`batch_size` x world size; the learning rate is not scaled); validation predictions
are gathered from every rank, so each rank decides on the whole split; only rank 0
logs and writes checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from edgetune import log
from edgetune.data.dataset import make_loader
from edgetune.errors import EdgetuneError
from edgetune.models.freeze import apply_freeze, parameter_groups
from edgetune.runtime.files import atomic_path
from edgetune.train import distributed
from edgetune.train.hooks import TrainHooks
from edgetune.train.predict import NHWC, nhwc, predict, to_device

logger = log.get(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | sgd
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    balance: str = "loss"  # loss (class-weighted, where the task weighs classes) | sampler | none
    freeze: str = "full"
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = off
    metric: str | None = None  # None: the task's first validation metric
    keep: str = "best"  # best: the epoch with the best validation metric | last: the last epoch trained
    seed: int = 0
    distill: float = 0.0  # weight of the teacher's soft targets in the loss (needs a teacher); 0 = plain labels
    ema: float = 0.0  # decay of a moving average of the weights, which is validated and kept instead of them; 0 = off
    layer_decay: float = (
        1.0  # each stage learns at this times the rate of the stage above it; the head at lr; 1 = one rate
    )
    mixup: float = 0.0  # Beta(mixup, mixup) weight of each batch blended with a shuffled copy of itself; 0 = off
    device: str = "auto"
    workers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train_config(opts: dict) -> TrainConfig:
    """The training loop's settings from a command's options."""
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: opts[k] for k in fields if opts.get(k) is not None})


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float
    kept_epoch: int = -1  # the epoch whose weights the model holds on return
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


class RankShare(Sampler):
    """This rank's share of a sampler that every rank draws identically (the same
    seeded generator): every `world`-th index, equal counts on every rank."""

    def __init__(self, base: Sampler, rank: int, world: int):
        self.base, self.rank, self.world = base, rank, world

    def __len__(self) -> int:
        return len(self.base) // self.world

    def __iter__(self):
        return iter(list(self.base)[self.rank :: self.world][: len(self)])


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if not 0 < cfg.layer_decay <= 1:
        raise EdgetuneError(
            f"--layer-decay {cfg.layer_decay}: use a factor in (0, 1]; 1 gives every stage the same learning rate."
        )
    # Stages as --freeze counts them (stem ... head): the head, new for the task, learns
    # at lr, and each stage below at layer_decay times the one above, so the general
    # early features move least.
    stages = parameter_groups(model) if cfg.layer_decay < 1 else []
    scale = {n: cfg.layer_decay ** (len(stages) - 1 - i) for i, names in enumerate(stages) for n in names}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        weight_decay = 0.0 if p.ndim <= 1 or name.endswith(".bias") else cfg.weight_decay
        groups.setdefault((cfg.lr * scale.get(name, 1.0), weight_decay), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise EdgetuneError(f"--optimizer {cfg.optimizer!r}: use adamw or sgd.")


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    hooks: TrainHooks,
    cfg: TrainConfig,
    ckpt_dir: Path,
    resume: bool = False,
    desc: str = "train",
    teacher: nn.Module | None = None,
    score_start: bool = False,
) -> FitResult:
    """Train `model` in place with the task's `hooks` (loss, predictions, validation
    metrics); on return it holds the best validation weights (or, with `cfg.keep`
    "last", the last epoch's; with `cfg.ema`, their average). `score_start`: the
    weights it starts from are validated too, as epoch 0, and kept if no epoch
    beats them. `ckpt_dir` receives
    best.pt (state dict) and last.pt (resume state). With a `teacher` and
    `cfg.distill` > 0, the task's loss learns from the teacher's predictions too
    (knowledge distillation)."""
    metric = cfg.metric or hooks.metrics[0]
    if metric not in hooks.metrics:
        raise EdgetuneError(f"--metric {metric!r}: use one of {', '.join(hooks.metrics)}.")
    if cfg.keep not in ("best", "last"):
        raise EdgetuneError(f"--keep {cfg.keep!r}: use best or last.")
    if cfg.balance not in ("loss", "sampler", "none"):
        raise EdgetuneError(f"--balance {cfg.balance!r}: use loss, sampler or none.")
    rank, world = distributed.rank(), distributed.world_size()
    main = distributed.is_main()
    device = distributed.device_for(cfg.device)
    model.to(device, memory_format=NHWC)
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"

    hooks = hooks.to(device)
    weights = hooks.sample_weights(train_set) if cfg.balance == "sampler" else None
    if cfg.balance == "sampler" and weights is None:
        raise EdgetuneError(
            "--balance sampler weights images by their class, and this task's targets have none. Use --balance loss or "
            "none."
        )
    steps_per_epoch = max(1, math.ceil(len(train_set) / (cfg.batch_size * world)))
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    )
    val_loader = make_loader(val_set, cfg.batch_size, cfg.workers, shuffle=False, collate_fn=hooks.collate)
    train_model, trainable = model, None
    if cfg.distill > 0 and teacher is None:
        raise EdgetuneError(f"--distill {cfg.distill}: distillation needs a teacher model.")
    if cfg.distill > 0:
        teacher = teacher.to(device, memory_format=NHWC).eval().requires_grad_(False)
    # The average is what validation sees and what the checkpoints keep: on a small
    # validation split the raw weights of a high-lr epoch swing by points from one
    # epoch to the next, and the best epoch is then picked by that noise.
    ema = _ema(model, cfg.ema) if cfg.ema > 0 else None
    scored = ema.module if ema is not None else model

    def loss_fn(x: torch.Tensor, y) -> torch.Tensor:
        return hooks.loss(train_model, x, y, teacher if cfg.distill > 0 else None)

    history: list[dict] = []
    start, best, best_epoch, since_best = 0, -math.inf, -1, 0
    # Rank 0 reads the checkpoint and hands it to the others: their machines need not see --out.
    state = distributed.on_main(
        lambda: torch.load(last_path, map_location="cpu", weights_only=True) if resume and last_path.exists() else None
    )
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, best_epoch, since_best = (
            state["history"],
            state["best"],
            state["best_epoch"],
            state["since_best"],
        )
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        start = state["epoch"] + 1
        logger.info("Resuming %s from epoch %d of %d (%s).", desc, start + 1, cfg.epochs, last_path)
    elif resume:
        logger.warning("--resume: no %s checkpoint in %s; starting from the first epoch.", desc, ckpt_dir)
    if score_start and state is None:
        # The starting weights compete with every epoch's: QAT starts from a calibrated model that
        # validation may already prefer to what a few epochs of training make of it.
        val = hooks.validate(*predict(scored, val_loader, device, hooks))
        best, best_epoch = hooks.score(val, metric), 0
        if main:
            save_atomic(scored.state_dict(), best_path)
            logger.info("%s as it starts: val %s", desc, ", ".join(f"{k} {val[k]:.4f}" for k in hooks.metrics))

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=log.console,
        disable=not main or log.quiet(),
        transient=True,
    )
    stopped = False
    with progress:
        for epoch in range(start, cfg.epochs):
            n_train = apply_freeze(model, cfg.freeze, epoch)
            if world > 1 and trainable != (now := [p.requires_grad for p in model.parameters()]):
                # DDP reduces the gradients of the parameters that train when it wraps the
                # model: wrap again when --freeze changes them.
                train_model, trainable = _ddp(model, device), now
            # Seeded per epoch: a resumed run sees the same order and augmentations.
            torch.manual_seed(cfg.seed * 100003 + epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            if cfg.balance == "sampler":
                sampler = WeightedRandomSampler(weights, num_samples=len(train_set), replacement=True, generator=gen)
                sampler = RankShare(sampler, rank, world) if world > 1 else sampler
            elif world > 1:
                # each rank a disjoint share of a permutation seeded by seed and epoch
                sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, seed=cfg.seed)
                sampler.set_epoch(epoch)
            else:
                sampler = torch.utils.data.RandomSampler(train_set, generator=gen)
            loader = make_loader(
                train_set,
                cfg.batch_size,
                cfg.workers,
                sampler=sampler,
                drop_last=len(sampler) > cfg.batch_size,
                collate_fn=hooks.collate,
            )
            task = progress.add_task(f"{desc} epoch {epoch + 1}/{cfg.epochs}", total=len(loader), info="")
            train_model.train()
            total, count, tick = 0.0, 0, time.perf_counter()
            for step, (x, y) in enumerate(loader):
                x, y = nhwc(x.to(device, non_blocking=True)), to_device(y, device)
                loss = loss_fn(x, y)
                if not torch.isfinite(loss):
                    kept = f" The last good checkpoint is kept in {last_path}." if last_path.exists() else ""
                    raise EdgetuneError(
                        f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}.{kept} Lower "
                        f"--lr (now {cfg.lr}) and rerun with --resume."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model, step=epoch * steps_per_epoch + step + 1)
                total += loss.item() * len(x)
                count += len(x)
                progress.update(task, advance=1, info=f"loss {total / count:.4f}")
            progress.remove_task(task)
            total, count = distributed.all_sum([total, count])
            seconds = time.perf_counter() - tick  # the training steps of every rank (all_sum waits for the last)

            val = hooks.validate(*predict(scored, val_loader, device, hooks))
            score = hooks.score(val, metric)
            row = {
                "epoch": epoch + 1,
                "train_loss": total / max(1, count),
                **{f"val_{k}": val[k] for k in hooks.metrics},
                "lr": max(g["lr"] for g in optimizer.param_groups),
                "trainable_params": n_train,
                "train_images": int(count),
                "train_seconds": round(seconds, 3),
            }
            history.append(row)
            improved = score > best
            if improved:
                best, best_epoch, since_best = score, epoch + 1, 0
            else:
                since_best += 1
            if main:
                if improved:
                    save_atomic(scored.state_dict(), best_path)
                save_atomic(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "history": history,
                        "best": best,
                        "best_epoch": best_epoch,
                        "since_best": since_best,
                        **({"ema": ema.module.state_dict()} if ema is not None else {}),
                    },
                    last_path,
                )
                logger.info(
                    "%s epoch %d/%d: train loss %.4f, val %s%s",
                    desc,
                    epoch + 1,
                    cfg.epochs,
                    row["train_loss"],
                    ", ".join(f"{k} {val[k]:.4f}" for k in hooks.metrics),
                    "  (best)" if improved else "",
                )
            if cfg.patience and since_best >= cfg.patience:
                logger.info("Early stop: no better val %s in %d epochs.", metric, cfg.patience)
                stopped = True
                break

    kept_epoch = history[-1]["epoch"] if history else -1
    if cfg.keep == "best" and distributed.on_main(best_path.exists):
        if main:
            model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
        distributed.broadcast_state(model)  # rank 0 alone wrote best.pt
        kept_epoch = best_epoch
    elif ema is not None:
        model.load_state_dict(ema.module.state_dict())
    model.to(memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format)
    return FitResult(
        best_epoch=best_epoch, best_metric=best, kept_epoch=kept_epoch, history=history, stopped_early=stopped
    )


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped for data-parallel training (its weights copied from rank 0)."""
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _ema(model: nn.Module, decay: float):
    from timm.utils import ModelEmaV3

    if not 0 < decay < 1:
        raise EdgetuneError(
            f"--ema {decay}: give the average's decay per step, between 0 and 1 (e.g. 0.99), or 0 for none."
        )
    try:
        # warm-up: the decay grows with the step count, so the new head's random start fades fast
        return ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=0.75)
    except Exception as e:  # e.g. a model that cannot be deep-copied
        raise EdgetuneError(
            f"--ema {decay}: cannot keep an average of this model ({type(e).__name__}: {e}). Train without --ema."
        ) from None


def save_atomic(obj, path: Path) -> None:
    """torch.save that never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
