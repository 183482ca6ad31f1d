"""The compile stage, one per target: the target plug-in compiles the exported
ONNX into the device's artifacts, each artifact is evaluated on the test split
through a runtime session (the device's own code path) and timed, and the whole
is written as a bundle (stages/bundle.py) that the device loads and verifies."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.run import load_run
from edgetune.stages.base import Result, Stage

logger = log.get(__name__)


class CompileStage(Stage):
    """`exports`: precision ("int8", "fp32") -> the export stage it compiles from;
    `runs`: role ("finetune", "prune", "quantize") -> the training stage (or the
    run `build --from` started from) whose records the manifest keeps."""

    def __init__(self, profile, target, exports: dict[str, str], runs: dict[str, str], precision: str | None = None):
        from edgetune import __version__

        self.profile, self.target, self.exports, self.runs = profile, target, exports, runs
        self.precision = precision  # the build's --precision: the main artifact's, whatever the timings say
        self.name, self.bundle = f"compile-{profile.name}", f"bundle-{profile.name}"
        self.inputs = (*exports.values(), *runs.values())
        self.version = __version__

    def config(self) -> dict:
        profile = {k: v for k, v in self.profile.to_dict().items() if k != "source"}
        return {
            "profile": profile,
            "edgetune": self.version,
            **({"precision": self.precision} if self.precision else {}),
        }

    def run(self, inputs: list[Result], out: Path, resume: bool) -> dict:
        from edgetune.stages.bundle import final_run, write_bundle
        from edgetune.targets.base import CompileInput

        by_name = {r.name: r for r in inputs}
        exports = {p: by_name[s] for p, s in self.exports.items()}
        runs = {role: load_run(out / by_name[s].output["run_dir"]) for role, s in self.runs.items()}
        onnx = {p: out / r.output["file"] for p, r in exports.items()}
        final = final_run(runs)
        inp = CompileInput(
            onnx, final.classes, final.spec, *onnx_input(onnx.get("int8") or onnx["fp32"]), task=final.task
        )
        staging = out / f".{self.bundle}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        from edgetune.stages.main_precision import choose, paired_speed

        arts = compile_and_evaluate(self.target, inp, final, staging)
        speed = paired_speed(self.target, staging, arts, inp.spec, self.profile.options.get("threads") or None)
        choice = choose(self.profile, speed, self.precision)
        key = self.key([r.key for r in inputs])
        write_bundle(out / self.bundle, staging, self.target, inp, arts, exports, runs, key, choice)
        return {"bundle": self.bundle, "archive": f"{self.bundle}.tar.gz", "artifacts": sorted(arts)}

    def still_there(self, out: Path, output: dict) -> bool:
        return (out / output["bundle"]).is_dir()


def compile_and_evaluate(target, inp, run, dest: Path) -> dict[str, dict]:
    """The target's artifacts in `dest`, each with its metrics on the test images
    of `run` (the bundle's source) and a quick latency (the manifest's
    `artifacts`). Each session is read by the run's task as the device reads it."""
    from edgetune.export.checks import rule_problems

    profile, spec, onnx = target.profile, inp.spec, inp.onnx
    if profile.size and tuple(profile.size) != tuple(spec.size):
        raise EdgetuneError(
            f"Target profile {profile.source}: field 'input.size' is {list(profile.size)} but the model was trained at "
            f"{list(spec.size)}. Set img-size: {profile.size[0]} in the config, or remove input.size from the profile."
        )
    checks = {}
    if target.qdq_rules and "int8" in onnx:
        import onnx as onnx_lib

        problems, notes = rule_problems(onnx_lib.load(str(onnx["int8"])), target.qdq_rules)
        if problems:
            raise EdgetuneError(
                f"The INT8 ONNX {onnx['int8']} breaks {target.qdq_rules}'s explicit-quantization rules, so a "
                f"{profile.name} engine would not be INT8:\n  - "
                + "\n  - ".join(problems[:20])
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            )
        checks = {f"{target.qdq_rules}_rules": "passed", "notes": notes}
    arts = target.compile(inp, dest)
    for precision, art in arts.items():
        if precision == "int8" and checks:
            art["checks"] = checks
        raw = target.load(dest, {**art, "runtime": target.eval_runtime()}, spec)
        own = run.task_impl.artifact_section(raw, run)
        if own:
            art["task_section"] = own
        session = run.task_impl.wrap(raw, run, art)
        metrics = {"test": evaluate_session(session, run, f"{profile.name} {precision}: test split via {session.name}")}
        metrics.update(measure_latency(session, spec, profile.options.get("threads") or None))
        metrics["evaluated_with"] = session.name
        metrics["inference_precision"] = session.inference_precision  # read back from the runtime (e.g. fp32, not bf16)
        art["metrics"] = metrics
        logger.info(
            "bundle-%s %s via %s: test %s, %.2f ms (batch 1, this machine).",
            profile.name,
            precision,
            session.name,
            session.headline(metrics["test"]),
            metrics["latency_ms_p50"],
        )
    return arts


def evaluate_session(session, run, desc: str) -> dict:
    """Test metrics of a task session on the run's test images, decoded by OpenCV:
    the device's own path."""
    from edgetune.bench.artifacts import session_results

    pairs = run.split.parts["test"]
    task = run.task_impl
    results = session_results(session, [p for p, _ in pairs], desc=desc)
    return task.artifact_metrics(task.results_metrics(results, [y for _, y in pairs], run.classes))


def measure_latency(session, spec, threads: int | None = None) -> dict:
    """A quick batch-1 latency of the model call on this machine (bench does it properly)."""
    from edgetune.runtime.timing import Policy, time_call

    x = np.random.default_rng(0).standard_normal((1, 3, *spec.size)).astype(np.float32)
    stats = time_call(lambda: session.run(x), Policy(warmup=5, min_time_s=1.0, min_runs=20)).stats()
    return {
        "latency_ms_p50": round(stats["p50_ms"], 3),
        "latency_ms_p90": round(stats["p90_ms"], 3),
        "latency_machine": platform.processor() or platform.machine(),
        "latency_threads": threads,
    }


def onnx_input(path: Path) -> tuple[str, list]:
    """The graph input's name and shape (None for a dynamic dimension)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims
