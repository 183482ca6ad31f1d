"""A run directory: what one stage (fine-tune, prune, quantize) produced.

run.json         what this is: backbone, classes, stage, architecture record,
                 quantization record, stage history with configs and metrics
preprocess.json  the preprocessing spec (shared with export and the device)
split.json       the exact train/val/test images
config.yaml      the resolved options of the command that made it
model.pt         the best weights (a plain state dict, loaded weights_only)
ckpt/            best.pt and last.pt while training (resume)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgetune import __version__
from edgetune.data.split import Split
from edgetune.errors import EdgetuneError
from edgetune.runtime.files import read_json, write_json, write_text
from edgetune.runtime.preprocess import PreprocessSpec
from edgetune.runtime.tasks import task_of

FORMAT = "edgetune-run"
SCHEMA = 1
# A stage may follow only these (float fine-tune, then prune with recovery, then QAT).
ALLOWED_PARENTS = {"pruned": {"float", "pruned"}, "qat": {"float", "pruned"}, "ptq": {"float", "pruned"}}
ORDER_HELP = (
    "The pipeline order is: finetune (float), then prune with recovery, then quantize (qat or ptq), then export."
)


@dataclass
class Run:
    dir: Path
    info: dict
    spec: PreprocessSpec
    split: Split

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def model_name(self) -> str:
        return self.info["model"]

    @property
    def stage(self) -> str:
        return self.info["stage"]

    @property
    def task(self) -> str:
        return task_of(self.info)

    @property
    def task_impl(self):
        """The build half of the run's task (`edgetune.tasks.base.Task`), from the registry."""
        from edgetune.runtime.tasks import build

        return build(self.task)

    @property
    def quantized(self) -> bool:
        return self.stage in ("qat", "ptq")

    def build_model(self, device: str = "cpu"):
        """The trained model, rebuilt by its task from the records (never an unpickled module)."""
        return self.task_impl.load_model(self, device)

    def test_metrics(self) -> dict:
        return (self.info["history"][-1].get("metrics") or {}).get("test", {})


def is_run(path: Path) -> bool:
    return (Path(path) / "run.json").is_file()


def load_run(path: str | Path, data: str | None = None) -> Run:
    """`data`: where the run's data source is on this machine, when its recorded
    --data does not point there (split.json's paths are relative to the source)."""
    path = Path(path)
    if not path.is_dir():
        raise EdgetuneError(
            f"{path}: no such run directory. Give the --out folder of an edgetune finetune, prune or quantize run."
        )
    if not is_run(path):
        hint = (
            " It holds an unfinished run: rerun its command with --resume."
            if (path / "ckpt" / "last.pt").exists()
            else ""
        )
        raise EdgetuneError(
            f"{path}: not an edgetune run (no run.json).{hint} Give the --out folder of an edgetune finetune, prune or "
            "quantize run."
        )
    try:
        info = read_json(path / "run.json")
        if info.get("format") != FORMAT:
            raise ValueError(f"format is {info.get('format')!r}, not {FORMAT!r}")
        spec = PreprocessSpec.from_dict(read_json(path / "preprocess.json"))
        split = Split.load(path / "split.json", data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgetuneError(f"{path}: not a valid edgetune run ({e}).") from None
    return Run(path, info, spec, split)


def check_order(parent: Run, stage: str) -> None:
    if parent.stage not in ALLOWED_PARENTS.get(stage, set()):
        raise EdgetuneError(
            f"{parent.dir} is a '{parent.stage}' run and cannot be the input of '{stage}'. {ORDER_HELP}"
        )


def prepare_out(out: Path, resume: bool, force: bool = False) -> Path:
    """Check `--out` before work starts: never overwrite a finished run by accident."""
    out = Path(out)
    if is_run(out) and not force:
        raise EdgetuneError(
            f"--out {out} already holds a finished run. Choose another --out, or pass --force to replace it."
        )
    if (out / "ckpt" / "last.pt").exists() and not (resume or force):
        raise EdgetuneError(
            f"--out {out} holds an interrupted run. Pass --resume to continue it, or --force to start over."
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def stage_record(stage: str, config: dict, inputs_hash: str, metrics: dict, started: float) -> dict:
    return {
        "stage": stage,
        "config": config,
        "inputs_hash": inputs_hash,
        "metrics": metrics,
        "seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_run(
    out: Path,
    *,
    stage: str,
    task: str,
    model: str,
    classes: list[str],
    spec: PreprocessSpec,
    split: Split,
    history: list[dict],
    config: dict,
    parent: str | None = None,
    **extra,
) -> None:
    """Write the run's records. run.json goes last: its presence marks a finished run."""
    write_json(out / "preprocess.json", spec.to_dict())
    split.save(out / "split.json")
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    info = {
        "format": FORMAT,
        "schema": SCHEMA,
        "edgetune": __version__,
        "stage": stage,
        "task": task,
        "model": model,
        "classes": classes,
        "parent": parent,
        "history": history,
        **extra,
    }
    write_json(out / "run.json", info)
