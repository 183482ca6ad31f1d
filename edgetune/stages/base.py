"""The one shape every stage driver has.

A `Stage` is a step of a build: fine-tune, prune, quantize, one ONNX export
variant, one target's compile-and-bundle. It is made with its resolved options,
names the stages whose results it takes (`inputs`), and has two methods:

- `key(upstream)`: its inputs hash (its own options, the inputs' keys, and for a
  conversion edgetune's version): a build skips a finished stage whose key is
  unchanged;
- `run(inputs, out, resume)`: does the work under the build directory `out` and
  returns its output record: JSON-serialisable, paths relative to `out` (so a
  build directory can be moved), handed on to the stages after it.

The standalone commands (`edgetune finetune`, `prune`, ...) call the same drivers.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edgetune import __version__
from edgetune.runtime.files import sha256_json

# Options that say where or how, not what: they never change a stage's result.
NOT_HASHED = {"out", "resume", "force", "run-dir", "run_dir", "command", "device", "workers"}


@dataclass(frozen=True)
class StageOptions:
    """A stage's resolved options: `values` as its driver takes them (Python names,
    typed), `record` the YAML-safe mapping by long option names that the run's
    config.yaml keeps and the stage's key hashes."""

    values: dict
    record: dict

    def with_values(self, **values) -> "StageOptions":
        rec = dict(self.record)
        for k, v in values.items():
            rec[k.replace("_", "-")] = str(v) if isinstance(v, Path) else v
        return StageOptions({**self.values, **values}, rec)

    def hashed(self) -> dict:
        return {k: v for k, v in self.record.items() if k not in NOT_HASHED}


@dataclass(frozen=True)
class Result:
    """A finished (or reused) stage: its name, inputs hash and output record."""

    name: str
    key: str
    output: dict
    cached: bool = False


class Stage:
    name: str = "?"
    inputs: tuple[str, ...] = ()
    distributed: bool = False  # under torchrun, run by every rank (training); else by rank 0 alone
    # A conversion's output (an export, a compiled bundle) comes from the code as much as from its
    # inputs, so another edgetune version redoes it; trained weights stay valid (TrainingStage: False).
    versioned: bool = True

    def key(self, upstream: list[str]) -> str:
        """Hash of what decides this stage's result; `upstream` are its inputs' keys."""
        what = {"stage": self.name, "upstream": upstream, "config": self.config()}
        return sha256_json({**what, "edgetune": __version__} if self.versioned else what)

    def config(self) -> dict:
        """The settings `key` covers and the stage history records."""
        return {}

    def run(self, inputs: list[Result], out: Path, resume: bool) -> dict:
        raise NotImplementedError

    def still_there(self, out: Path, output: dict) -> bool:
        """Is a cached result's output still on disk? (A deleted one is redone.)"""
        return True


def fresh_dir(path: Path, resume: bool) -> Path:
    """A stage's directory: kept when resuming, else emptied."""
    if path.exists() and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
