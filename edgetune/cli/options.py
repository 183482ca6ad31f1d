"""Options shared by several commands, defined once. Importing this module must
stay cheap: no torch."""

from __future__ import annotations

import functools
from pathlib import Path

import click


class AugmentType(click.ParamType):
    """`hflip,vflip,rot90,rotate=10,rrc=0.8,brightness=0.2,contrast=0.2`, `none`, or
    (from YAML) a mapping of those keys."""

    name = "augment"

    def convert(self, value, param, ctx):
        from edgetune.data.augment import Augment

        try:
            return Augment.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _stack(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


data_options = _stack(
    click.option(
        "--data",
        default="elpv",
        show_default=True,
        help="A folder with one sub-folder per class, a CSV with columns path,label, 'elpv' or 'elpv:4class'.",
    ),
    click.option(
        "--skip-bad", is_flag=True, help="Leave unreadable images out (counted and recorded) instead of stopping."
    ),
    click.option(
        "--val-frac",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.15,
        show_default=True,
        help="Fraction of images for validation.",
    ),
    click.option(
        "--test-frac",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.25,
        show_default=True,
        help="Fraction of images for test (25% as Deitsch et al. 2019).",
    ),
    click.option(
        "--split-seed",
        type=int,
        help="Seeds the split alone (default: --seed): runs with different --seed values then share their test images.",
    ),
)

model_options = _stack(
    click.option("--model", default="efficientnet_lite0", show_default=True, help="Any timm model name."),
    click.option(
        "--weights",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A local state dict to start from (loaded weights_only).",
    ),
    click.option(
        "--pretrained/--no-pretrained",
        default=True,
        show_default=True,
        help="ImageNet weights: offline packages for efficientnet_lite0/1/2, else timm's hub.",
    ),
    click.option(
        "--img-size",
        type=click.IntRange(16, 1024),
        help="Input size (square); default from the backbone's pretrained config.",
    ),
    click.option(
        "--drop-rate",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Dropout before the classifier.",
    ),
)


def task_options(f):
    """`--task` (the registry's tasks) and the options each task adds: finetune's
    and the config file's. Reading them imports each task's light module, not torch."""
    from edgetune import tasks

    found = tasks.loaded()
    help = "What to learn. " + " ".join(f"{name}: {t.help}" for name, t in found.items())
    options = [
        click.option("--task", type=click.Choice(list(found)), default=tasks.DEFAULT, show_default=True, help=help)
    ]
    return _stack(*options, *[o for t in found.values() for o in t.options])(f)


def task_overrides(f):
    """`build`'s overrides of finetune's --task and of the task options builds override."""
    from edgetune import tasks

    found = tasks.loaded()
    options = [
        click.option("--task", type=click.Choice(list(found)), default=None, help="Override finetune's --task.")
    ] + [
        click.option(f"--{key.replace('_', '-')}", default=None, help=help)
        for t in found.values()
        for key, help in t.overrides.items()
    ]
    return _stack(*options)(f)


def gate_defaults() -> str:
    """Each task's gate metric and its default limit, for the help of --max-drop."""
    from edgetune import tasks

    parts = []
    for name, t in tasks.loaded().items():
        always = "; always gated" if t.always_gated else ""
        parts.append(f"--task {name}: {t.metric_label}, default {t.default_max_drop:g}{always}")
    return "; ".join(parts)


def task_override_names() -> list[str]:
    from edgetune import tasks

    return ["task", *[key for t in tasks.loaded().values() for key in t.overrides]]


def train_options(
    epochs: int,
    lr: float,
    freeze: str = "full",
    warmup: float = 1.0,
    weight_decay: float = 0.05,
    inherit_augment: bool = False,
):
    """The training loop's options; each command that trains sets its own defaults.
    `inherit_augment`: no default augmentation; the stage trains with its input run's."""
    from edgetune.data.augment import DEFAULT_AUGMENT

    augment_help = (
        "Training augmentations: comma list of hflip, vflip, rot90, rotate=DEG, rrc=MIN_AREA, brightness=X, "
        "contrast=X, mosaic=SHARE (detection); or 'none'."
    )
    if inherit_augment:
        augment_help += " Default: those the input run trained with."
    return _stack(
        click.option("--epochs", type=click.IntRange(0), default=epochs, show_default=True, help="Training epochs."),
        click.option(
            "--batch-size",
            type=click.IntRange(1),
            default=32,
            show_default=True,
            help="Images per step and process: under torchrun the global batch is this times the number of "
            "processes, and --lr is used as given (not scaled).",
        ),
        click.option(
            "--lr",
            type=click.FloatRange(0, min_open=True),
            default=lr,
            show_default=True,
            help="Peak learning rate (cosine schedule with warm-up).",
        ),
        click.option("--weight-decay", type=click.FloatRange(0), default=weight_decay, show_default=True),
        click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True),
        click.option("--warmup-epochs", type=click.FloatRange(0), default=warmup, show_default=True),
        click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True),
        click.option(
            "--soft-labels/--hard-labels",
            default=False,
            show_default=True,
            help="Train on the label probabilities where the data source has them (ELPV: the defect probability).",
        ),
        click.option(
            "--balance",
            type=click.Choice(["loss", "sampler", "none"]),
            default="loss",
            show_default=True,
            help="Class imbalance: weighted loss, weighted sampler, or nothing.",
        ),
        click.option(
            "--freeze",
            default=freeze,
            show_default=True,
            help="full, head, last:N (last N stages + head) or gradual:K (one more stage every K epochs).",
        ),
        click.option(
            "--ema",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="Validate and keep a moving average of the weights with this decay per step (e.g. 0.99); 0: the "
            "weights themselves.",
        ),
        click.option(
            "--layer-decay",
            type=click.FloatRange(0, 1, min_open=True),
            default=1.0,
            show_default=True,
            help="The head learns at --lr and each stage below it (as --freeze counts them) at this times the rate "
            "of the stage above: the general early features move least. 1: one rate for all.",
        ),
        click.option(
            "--mixup",
            type=click.FloatRange(0),
            default=0.0,
            show_default=True,
            help="Blend each training image with another of its batch, and their targets, by a Beta(ALPHA, ALPHA) "
            "weight (mixup; e.g. 0.2). 0: no blending.",
        ),
        click.option(
            "--keep",
            type=click.Choice(["best", "last"]),
            default="best",
            show_default=True,
            help="Which weights the run keeps: the epoch with the best validation --metric, or the last epoch's "
            "(the schedule has annealed there; on a small validation split the best epoch is picked by noise).",
        ),
        click.option(
            "--patience",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="Stop after this many epochs without a better validation metric (0: never).",
        ),
        click.option(
            "--metric",
            default=None,
            help="Validation metric that picks the best checkpoint: one the task validates on (classification: "
            "accuracy, balanced_accuracy, f1 or loss); default: the task's first (accuracy).",
        ),
        click.option(
            "--augment",
            type=AugmentType(),
            default=None if inherit_augment else DEFAULT_AUGMENT,
            show_default=not inherit_augment,
            help=augment_help,
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seeds the split (unless --split-seed), initialisation, data order and augmentation.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="auto (CUDA when present), cpu, cuda, cuda:1 ... Under torchrun: "
            "auto, cuda or cpu; each process takes the GPU of its local rank.",
        ),
        click.option(
            "--workers", type=click.IntRange(0), default=0, show_default=True, help="Data-loading worker processes."
        ),
        click.option(
            "--resume", is_flag=True, help="Continue an interrupted run in --out from its last completed epoch."
        ),
        click.option("--force", is_flag=True, help="Replace what --out already holds."),
    )


distill_options = _stack(
    click.option(
        "--distill",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Weight of the teacher's predictions in the training loss (knowledge distillation); 0: labels only.",
    ),
    click.option(
        "--teacher",
        type=click.Path(file_okay=False, path_type=Path),
        help="Run directory of the distillation teacher (default: the input run). For QAT of a pruned run, the float "
        "run teaches best.",
    ),
)


def out_option(required: bool = True, help: str = "Run directory to write."):
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=required, help=help)


def run_argument(f):
    return click.argument("run_dir", type=click.Path(path_type=Path))(f)


def record(ctx: click.Context, **params) -> dict:
    """The resolved options of a command, as written into its output: a plain,
    YAML-safe mapping keyed by long option names. Options of tasks other than the
    command's --task are left out: they do not apply, and a stage's inputs hash
    (which covers the record) must not change when a task is added."""
    values = {**ctx.params, **params}
    out = {"command": ctx.command_path}
    for k in _other_tasks_options(values.get("task")):
        values.pop(k, None)
    for k, v in values.items():
        if isinstance(v, Path):
            v = str(v)
        elif hasattr(v, "to_dict"):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k.replace("_", "-")] = v
    return out


def _other_tasks_options(task: str | None) -> set[str]:
    """The option names (Python's) that tasks other than `task` add."""
    if task is None:
        return set()
    from edgetune import tasks

    def names(t) -> set[str]:
        probe = _stack(*t.options)(lambda: None)
        return {p.name for p in getattr(probe, "__click_params__", [])}

    own = names(tasks.get(task)) if task in tasks.loaded() else set()
    return {n for name, t in tasks.loaded().items() if name != task for n in names(t)} - own


def pass_options(f):
    """Call `f(ctx, opts)` with the command's options as one dict."""

    @click.pass_context
    @functools.wraps(f)
    def wrapper(ctx, **kwargs):
        return f(ctx, kwargs)

    return wrapper
