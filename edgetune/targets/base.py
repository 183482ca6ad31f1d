"""The target plug-in interface: is the runtime here, compile the exported ONNX
into the device's artifacts, load an artifact into a `Session`. Evaluation and
benchmarking use the session alone, never the plug-in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError
from edgetune.runtime import backends
from edgetune.runtime.preprocess import PreprocessSpec
from edgetune.runtime.tasks import DEFAULT
from edgetune.targets.profile import Profile, check_option_fields


@dataclass
class CompileInput:
    """What every target compiles from: the export stage's files and records."""

    onnx: dict[str, Path]  # "int8": the Q/DQ ONNX, "fp32": the float ONNX
    classes: list[str]
    spec: PreprocessSpec
    input_name: str
    input_shape: list  # [N, 3, H, W]; N None when any batch works
    task: str = DEFAULT  # the model's task (`edgetune.runtime.tasks`): what its outputs are

    def onnx_for(self, precision: str) -> Path:
        """int8 compiles from the Q/DQ model; fp16 and fp32 from the float one."""
        key = "int8" if precision == "int8" else "fp32"
        if key not in self.onnx:
            raise EdgetuneError(f"The export stage produced no {key} ONNX, which a {precision} artifact needs.")
        return self.onnx[key]


class Target:
    """A plug-in declares what it can build and how; the compile stage does the rest."""

    runtime = "?"
    signed_activations = False  # True: its runtime takes only signed int8 activations (no uint8 Q/DQ)
    qdq_rules: str | None = None  # extra Q/DQ rules its INT8 ONNX must pass (export/checks.py RULES)
    OPTIONS: dict[str, tuple[Any, str]] = {}

    def __init__(self, profile: Profile):
        self.profile = profile

    @property
    def precisions(self) -> tuple[str, ...]:
        """The artifacts it can produce: its runtime's record."""
        return backends.RUNTIMES[self.runtime].precisions

    @classmethod
    def check_options(cls, options: dict, where: str) -> None:
        check_option_fields(options, cls.OPTIONS, where)

    def available(self) -> bool:
        """Can this machine run the target's artifacts?"""
        return backends.available(self.runtime)

    def require(self) -> None:
        backends.require(self.runtime)

    def check_profile(self) -> None:
        """Refuse, before any training, a profile this plug-in cannot build."""
        wrong = [p for p in self.profile.precisions if p not in self.precisions]
        if wrong:
            raise EdgetuneError(
                f"Target profile {self.profile.source}: precision {', '.join(wrong)} in 'precision'/'fallback' cannot "
                f"be built for {self.runtime}; it builds {', '.join(self.precisions)}. Change the profile's precision "
                "or fallback."
            )
        self.require()

    def compile(self, inp: CompileInput, dest: Path) -> dict[str, dict]:
        """Write the artifacts for the profile's precisions into `dest`; return the
        manifest's `artifacts` entries (paths relative to `dest`)."""
        raise NotImplementedError

    def onnx_activations(self) -> str:
        """Which INT8 export the target compiles from (`export_onnx`'s `activations`):
        "keep" (the Q/DQ as quantized) unless the runtime runs another form faster."""
        return "keep"

    def eval_runtime(self) -> str:
        """The runtime that evaluates the compiled artifact on the build machine."""
        return self.runtime

    def load(self, root: Path, artifact: dict, spec: PreprocessSpec, threads: int | None = None):
        return backends.open_session(
            artifact.get("runtime", self.runtime),
            Path(root) / artifact["file"],
            spec,
            artifact,
            threads=threads,
            root=Path(root),
        )

    def artifact(self, precision: str, files: list[str], fmt: str, dest: Path, **extra) -> dict:
        return {
            "file": files[0],
            "files": files,
            "format": fmt,
            "precision": precision,
            "runtime": self.runtime,
            "size_bytes": sum((dest / f).stat().st_size for f in files),
            **extra,
        }

    def extra_files(self, bundle_root: Path, manifest: dict) -> None:
        """Write target-specific files into the bundle (e.g. a trtexec command)."""

    def readme(self, manifest: dict) -> str:
        """Device README lines specific to this target (Markdown)."""
        return ""


def int_at_least(n: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= n
