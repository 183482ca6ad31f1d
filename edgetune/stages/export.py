"""The `export` stage: one ONNX variant of the final run (fp32, INT8 Q/DQ as
quantized, or INT8 with uint8 activations for ONNX Runtime), checked by
export/checks.py. Each variant is its own stage, so targets needing the same
file share one export."""

from __future__ import annotations

from pathlib import Path

from edgetune.runtime.files import sha256_file
from edgetune.stages.base import Result, Stage, StageOptions


def export_name(precision: str, activations: str) -> str:
    """The variant's tag (stage and file name): fp32, int8 or int8-uint8."""
    return precision if precision != "int8" or activations == "keep" else f"{precision}-{activations}"


class ExportStage(Stage):
    """One ONNX variant of the final run, as its task exports it. `shared`: a dict
    the build's export stages share (a task's work done once for every variant,
    such as one post-training quantization)."""

    def __init__(self, precision: str, activations: str, options: StageOptions, run: str, shared: dict | None = None):
        self.precision = precision
        self.activations = activations if precision == "int8" else "keep"
        self.tag = export_name(precision, self.activations)
        self.name, self.inputs = f"export-{self.tag}", (run,)
        self.options = options.with_values(precision=precision, activations=self.activations)
        self.shared = {} if shared is None else shared

    def config(self) -> dict:
        return self.options.hashed()

    def run(self, inputs: list[Result], out: Path, resume: bool) -> dict:
        from edgetune.export.graph import check_options
        from edgetune.run import load_run

        path = out / "export" / f"model.{self.tag}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        opts = self.options.values
        opset = opts.get("opset") or 17
        check_options(self.precision, opset, self.activations, path)
        run = load_run(out / inputs[0].output["run_dir"])
        info = run.task_impl.export(
            run,
            path,
            self.precision,
            opset,
            opts.get("check", True),
            self.activations,
            shared=self.shared,
            options=opts,
        )
        return {"file": f"export/{path.name}", "sha256": sha256_file(path), "info": info}
