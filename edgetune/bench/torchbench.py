"""The PyTorch baseline: a run's model as a `Session`, benchmarked by the same
runner and timing harness as every bundle.

    python -m edgetune.bench.torchbench RUN_DIR --out result.json [devicebench options]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetune.runtime.devicebench import main as bench_main
from edgetune.runtime.devicebench import stage_label
from edgetune.runtime.preprocess import PreprocessSpec, preprocess


class TorchSession:
    """A PyTorch model behind the `Session` interface: its outputs named `outputs`
    (the task's graph outputs, in the order the module returns them). `run_frames`
    uses the runtime's numpy/OpenCV preprocessing, so end-to-end times compare like
    for like."""

    name = "pytorch"
    precision = "fp32"  # a QAT run's model computes in float with fake quantizers
    inference_precision = "fp32"
    fixed_batch = None

    def __init__(self, model, spec: PreprocessSpec, threads: int | None = None, outputs: Sequence[str] = ("logits",)):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.model, self.spec, self.output_names = model.eval(), spec, list(outputs)

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.float().numpy() for name, o in zip(self.output_names, out)}

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_outputs(batch)[self.output_names[0]]

    def run_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return self.run(preprocess(frames, self.spec))


def run_info(run) -> dict:
    """The results-row facts of a run's PyTorch model."""
    from edgetune.models.stats import count_macs

    macs, params = count_macs(run.task_impl.architecture(run), run.spec.size)  # the (pruned) float architecture
    return {
        "kind": "run",
        "path": str(run.dir),
        "name": run.dir.name,
        "model": run.model_name,
        "stage": stage_label(run.stage, bool(run.info.get("arch"))),
        "target": None,
        "runtime": "pytorch",
        "precision": "fp32",
        "classes": list(run.classes),
        "task": run.task,
        "manifest": run.task_impl.manifest(run),
        "size_bytes": (run.dir / "model.pt").stat().st_size,
        "macs": macs,
        "params": params,
        "source_run": str(run.dir),
    }


def open_run(path: str, threads: int | None, precision: str | None = None, runtime: str | None = None):
    from edgetune.run import load_run

    run = load_run(Path(path))
    task = run.task_impl
    model = task.deploy_module(run.build_model())  # the module the export traces: the graph's outputs
    session = task.wrap(TorchSession(model, run.spec, threads, task.session.outputs), run)
    return session, run.spec, lambda: run_info(run)


if __name__ == "__main__":
    sys.exit(bench_main(opener=open_run))
