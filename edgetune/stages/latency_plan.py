"""`prune --target-latency F`: per-group pruning ratios chosen by measured latency.

MACs are a poor proxy for latency on a CPU: depthwise and memory-bound layers do
not shrink in proportion (on ELPV, 42% fewer MACs gave 33% lower OpenVINO INT8
latency). So each group of layers (`compress.prune.prune_groups`: the stem, each
stage of the body, the head) is pruned alone at each ratio of `GRID`, on a copy,
and each candidate is

- exported and run on the target's runtime (INT8 through the same NNCF
  quantization and ONNX export as the build, where the build is INT8), timed by the
  timing harness at batch 1: the latency it saves;
- evaluated in PyTorch on validation images without recovery: the cross-entropy
  it adds (finer than accuracy on a few hundred images).

Then, greedily, the step (a group to its next ratio) that saves the most
milliseconds per unit of loss added is taken until the predicted saving reaches
F of the unpruned latency. Savings are not exactly additive, so the combined
plan is measured; while it falls short, the goal is raised by the shortfall and
the greedy allocation continues. The plan (ratios, every candidate, predicted and
measured latency) is written to the run, so `--resume` does not measure again.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetune import log
from edgetune.compress.prune import prune_groups, prune_once
from edgetune.errors import EdgetuneError
from edgetune.runtime.timing import Policy, time_call

logger = log.get(__name__)
GRID = (0.25, 0.5, 0.75)  # ratios each group is measured at
VAL_IMAGES = 256
CALIB_IMAGES = 8  # calibration only sets the scales; latency does not depend on them
POLICY = Policy(warmup=5, min_time_s=0.5, min_runs=20)
ROUNDS = 3  # measure-and-correct rounds of the combined plan


@dataclass
class Probe:
    """What measuring a candidate needs: the run's input size and preprocessing,
    the runtime and precision to time on, calibration and validation images."""

    size: tuple[int, int]
    spec: object
    runtime: str
    precision: str
    threads: int | None
    calib: list[torch.Tensor]
    val_x: torch.Tensor
    val_y: torch.Tensor
    workdir: Path

    def latency_ms(self, model: torch.nn.Module) -> float:
        """p50 of `model` exported as the build would, on the runtime, batch 1."""
        from edgetune.export.graph import OUTPUT_NAME, save_onnx
        from edgetune.runtime.backends import open_session

        model = copy.deepcopy(model).cpu().eval()
        if self.precision == "int8":
            import nncf

            from edgetune.compress.quantize import quantize_model

            qmodel, _ = quantize_model(model, self.calib, self.size, activations="int8" if self.runtime == "tensorrt" else "auto")
            model = nncf.strip(qmodel, example_input=torch.zeros(1, 3, *self.size)).eval()
        else:
            from edgetune.compress.fold import fold_batchnorm

            fold_batchnorm(model, self.size)
        path = self.workdir / f"candidate.{self.precision}.onnx"
        activations = "uint8" if self.runtime == "onnxruntime" and self.precision == "int8" else "keep"
        save_onnx(model, self.size, path, self.precision, 17, activations, [OUTPUT_NAME], "latency candidate")
        artifact = {"precision": self.precision, "input": {"shape": [-1, 3, *self.size]}}
        session = open_session(self.runtime, path, self.spec, artifact, threads=self.threads)
        x = np.zeros((1, 3, *self.size), np.float32)
        return time_call(lambda: session.run(x), POLICY).stats()["p50_ms"]

    def val_loss(self, model: torch.nn.Module) -> float:
        model = model.cpu().eval()
        with torch.no_grad():
            losses = [torch.nn.functional.cross_entropy(model(self.val_x[i:i + 32]), self.val_y[i:i + 32], reduction="sum")
                      for i in range(0, len(self.val_x), 32)]
        return float(sum(losses) / len(self.val_x))


def make_probe(parent, runtime: str, precision: str, threads: int | None, workdir: Path) -> Probe:
    from edgetune.compress.quantize import calibration_tensors
    from edgetune.runtime.backends import require

    require(runtime)
    val = parent.split.parts["val"][:VAL_IMAGES]
    if not val:
        raise EdgetuneError(f"--target-latency weighs each pruning step by the loss it adds on validation images, and {parent.dir}'s split has none.")
    x = torch.cat(calibration_tensors(parent, val))
    y = torch.tensor([label for _, label in val])
    calib = calibration_tensors(parent, parent.split.parts["train"][:CALIB_IMAGES])
    return Probe(tuple(parent.spec.size), parent.spec, runtime, precision, threads, calib, x, y, workdir)


def plan_ratios(model: torch.nn.Module, probe: Probe, target: float, round_to: int, imp: str) -> dict:
    """The per-group ratios that remove `target` of the latency, and the record of
    how they were chosen (see the module's docstring)."""
    groups = prune_groups(model)
    base_ms, base_loss = probe.latency_ms(model), probe.val_loss(model)
    saved: dict[str, dict[float, float]] = {}
    added: dict[str, dict[float, float]] = {}
    candidates = []
    with log.progress("latency of pruned candidates", len(groups) * len(GRID) + ROUNDS) as advance:
        for g in groups:
            saved[g], added[g] = {0.0: 0.0}, {0.0: 0.0}
            for r in GRID:
                pruned = prune_once(copy.deepcopy(model), probe.size, 0.0, round_to, imp, {g: r})
                ms, loss = probe.latency_ms(pruned), probe.val_loss(pruned)
                saved[g][r], added[g][r] = base_ms - ms, max(loss - base_loss, 0.0)
                candidates.append({"group": g, "ratio": r, "latency_ms": ms, "val_loss": loss})
                advance()
        ratios = {g: 0.0 for g in groups}
        goal, rounds = target * base_ms, []
        for _ in range(ROUNDS):
            ratios = _allocate(ratios, saved, added, goal)
            measured = probe.latency_ms(prune_once(copy.deepcopy(model), probe.size, 0.0, round_to, imp, ratios))
            predicted = base_ms - sum(saved[g][r] for g, r in ratios.items())
            rounds.append({"ratios": dict(ratios), "predicted_ms": predicted, "measured_ms": measured})
            advance()
            shortfall = measured - (1 - target) * base_ms
            if shortfall <= 0:
                break
            if all(r == GRID[-1] for r in ratios.values()):
                break
            goal += shortfall
    reached = 1 - rounds[-1]["measured_ms"] / base_ms
    if reached < target * 0.9:  # within a tenth of the goal counts: timing on a busy machine moves by that much
        raise EdgetuneError(f"--target-latency {target:g}: the best plan found (each of {len(groups)} layer groups of {type(model).__name__} pruned by "
                            f"up to {GRID[-1]:.0%}) removed {reached:.0%} of its {probe.runtime} {probe.precision} latency ({base_ms:.2f} -> "
                            f"{rounds[-1]['measured_ms']:.2f} ms): its latency there does not fall that far with its channels. Ask for less, time on "
                            "another --latency-runtime, or prune by --ratio or --target-macs.")
    logger.info("--target-latency %.2f on %s %s: %.2f -> %.2f ms (%.0f%% less), ratios %s.", target, probe.runtime, probe.precision, base_ms,
                rounds[-1]["measured_ms"], 100 * reached, ", ".join(f"{g} {r:.2f}" for g, r in ratios.items() if r))
    return {"target": target, "runtime": probe.runtime, "precision": probe.precision, "threads": probe.threads, "base_ms": base_ms,
            "base_val_loss": base_loss, "ratios": ratios, "measured_ms": rounds[-1]["measured_ms"], "reduction": reached, "grid": list(GRID),
            "candidates": candidates, "rounds": rounds}


def _allocate(ratios: dict[str, float], saved: dict, added: dict, goal: float) -> dict[str, float]:
    """Greedy from `ratios`: take the step (one group to a larger measured ratio)
    with the most latency saved per loss added, until the predicted saving
    reaches `goal` ms or no step saves anything."""
    ratios = dict(ratios)

    def total():
        return sum(saved[g][r] for g, r in ratios.items())

    while total() < goal:
        best, best_score = None, 0.0
        for g, r in ratios.items():
            for x in (x for x in GRID if x > r):  # any later ratio: a small one may save nothing where a larger one does
                gain, cost = saved[g][x] - saved[g][r], added[g][x] - added[g][r]
                score = gain / max(cost, 1e-4)
                if gain > 0 and score > best_score:
                    best, best_score = (g, x), score
        if best is None:
            break
        ratios[best[0]] = best[1]
    return ratios


def workdir(out: Path):
    """A scratch folder for the candidates' ONNX files, removed afterwards."""
    out.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="latency-", dir=out)
