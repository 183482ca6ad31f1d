"""`prune --target-latency F`: per-group pruning ratios chosen by measured latency.

MACs are a poor proxy for latency on a CPU: depthwise and memory-bound layers do
not shrink in proportion (on ELPV, 42% fewer MACs gave 33% lower OpenVINO INT8
latency). So each group of layers (`compress.prune.prune_groups`: the stem, each
stage of the body, the head) is pruned alone at each ratio of `GRID`, on a copy,
and each candidate is

- exported and run on the target's runtime (INT8 through the same NNCF
  quantization and ONNX export as the build, where the build is INT8), timed by the
  timing harness at batch 1: the latency it saves;
- evaluated in PyTorch on validation images without recovery, after its
  BatchNorm statistics are re-estimated on a few train images (adaptive BN, Li et
  al., EagleEye, ECCV 2020: without it, a pruned network's loss ranks candidates
  far from how they rank after fine-tuning): the cross-entropy it adds (finer
  than accuracy on a few hundred images).

Then, greedily, the step (a group to its next ratio) that saves the most
milliseconds per unit of loss added is taken until the predicted saving reaches
F of the unpruned latency. Savings are not exactly additive, so the combined
plan is measured; while it falls short, the goal is raised by the shortfall and
the greedy allocation continues.

Every timing is paired: short bursts of the candidate alternate with bursts of the
unpruned model, and the saving is the difference of their medians. A machine's
speed drifts by more over the minutes of candidates (a tenth and more on a shared
CPU) than pruning one stage saves; timed one after the other, candidates were
ranked by the drift. The plan (ratios, every candidate, predicted and measured
latency) is written to the run, so `--resume` does not measure again.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetune import log
from edgetune.compress.prune import prune_groups, prune_once
from edgetune.errors import EdgetuneError
from edgetune.models.stats import count_macs
from edgetune.runtime.timing import Policy, time_alternating

logger = log.get(__name__)
GRID = (0.25, 0.5, 0.75)  # ratios each group is measured at
VAL_IMAGES = 256
CALIB_IMAGES = 8  # calibration only sets the scales; latency does not depend on them
BN_IMAGES = 64  # train images that re-estimate a candidate's BatchNorm statistics
PAIRS = 5  # bursts of each model in a paired timing
PAIRED = Policy(
    warmup=2, min_time_s=0.2 * PAIRS, min_runs=10 * PAIRS
)  # per model, over its bursts (2 warmup calls each)
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
    bn_x: torch.Tensor
    val: object  # a loader of the validation images and their targets
    task: object  # the run's task: what the graph adds and outputs, the validation loss
    hooks: object  # the task's training hooks (validation metrics)
    workdir: Path
    base: object = None  # the unpruned model's session, the other half of every paired timing
    exported: int = 0  # ONNX files written to workdir (each session keeps its own)

    def paired_ms(self, model: torch.nn.Module) -> tuple[float, float]:
        """(unpruned p50, `model`'s p50) at batch 1, from alternating bursts."""
        session = self.session(model)
        x = np.zeros((1, 3, *self.size), np.float32)
        t = time_alternating({"base": lambda: self.base.run(x), "cand": lambda: session.run(x)}, PAIRED, rounds=PAIRS)
        return t["base"].stats()["p50_ms"], t["cand"].stats()["p50_ms"]

    def session(self, model: torch.nn.Module):
        """A runtime session of `model` exported as the build would export it."""
        from edgetune.export.graph import save_onnx
        from edgetune.runtime.backends import open_session

        model = copy.deepcopy(model).cpu().eval()
        if self.precision == "int8":
            import nncf

            from edgetune.compress.quantize import quantize_model

            with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars, thirty times over, under our own
                qmodel, _ = quantize_model(model, self.calib, self.size)
            model = nncf.strip(qmodel, example_input=torch.zeros(1, 3, *self.size)).eval()
        else:
            from edgetune.compress.fold import fold_batchnorm, fold_layer_scale

            fold_batchnorm(model, self.size)
            fold_layer_scale(model)
        self.exported += 1
        path = self.workdir / f"candidate{self.exported}.{self.precision}.onnx"
        activations = "uint8" if self.runtime == "onnxruntime" and self.precision == "int8" else "keep"
        outputs = list(self.task.session.outputs)
        save_onnx(
            self.task.deploy_module(model),
            self.size,
            path,
            self.precision,
            17,
            activations,
            outputs,
            "latency candidate",
            np.concatenate([t.numpy() for t in self.calib[:16]]) if activations == "uint8" else None,
        )
        artifact = {"precision": self.precision, "input": {"shape": [-1, 3, *self.size]}}
        return open_session(self.runtime, path, self.spec, artifact, threads=self.threads)

    def val_loss(self, model: torch.nn.Module) -> float:
        from edgetune.train.predict import predict

        model = copy.deepcopy(model).cpu().eval()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:  # adaptive BN: statistics of the pruned network, as a cumulative average
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for i in range(0, len(self.bn_x) if norms else 0, 32):
                model(self.bn_x[i : i + 32])
            model.eval()
        return float(self.hooks.validate(*predict(model, self.val, hooks=self.hooks, local=True))["loss"])


def make_probe(parent, runtime: str, precision: str, threads: int | None, workdir: Path) -> Probe:
    from edgetune.compress.quantize import calibration_tensors
    from edgetune.runtime.backends import require
    from edgetune.train.loop import TrainConfig

    require(runtime)
    val = parent.split.parts["val"][:VAL_IMAGES]
    if not val:
        raise EdgetuneError(
            f"--target-latency weighs each pruning step by the loss it adds on validation images, and {parent.dir}'s "
            "split has none."
        )
    task = parent.task_impl
    train = torch.cat(calibration_tensors(parent, parent.split.parts["train"][:BN_IMAGES]))
    return Probe(
        tuple(parent.spec.size),
        parent.spec,
        runtime,
        precision,
        threads,
        list(train[:CALIB_IMAGES].split(1)),
        train,
        task.eval_loader(val, parent.spec, 32),
        task,
        task.hooks(parent.classes, TrainConfig()),
        workdir,
    )


def plan_ratios(model: torch.nn.Module, probe: Probe, target: float, round_to: int, imp: str, keep=()) -> dict:
    """The per-group ratios that remove `target` of the latency, and the record of
    how they were chosen (see the module's docstring)."""
    groups, macs0 = prune_groups(model, keep), count_macs(model, probe.size)[0]
    probe.base = probe.session(model)
    base_loss = probe.val_loss(model)
    probe.paired_ms(model)  # the first timings in a process run cold (first compile, caches): not the reference
    saved: dict[str, dict[float, float]] = {}
    added: dict[str, dict[float, float]] = {}
    candidates = []
    with log.progress("latency of pruned candidates", len(groups) * len(GRID) + ROUNDS) as advance:
        for g in groups:
            saved[g], added[g] = {0.0: 0.0}, {0.0: 0.0}
            for r in GRID:
                pruned = prune_once(copy.deepcopy(model), probe.size, 0.0, round_to, imp, {g: r}, keep)
                macs = count_macs(pruned, probe.size)[0]
                if (
                    macs == macs0
                ):  # nothing pruned (a layer already at one --round-to multiple): nothing to time but noise
                    saved[g][r], added[g][r] = 0.0, 0.0
                    candidates.append({"group": g, "ratio": r, "macs": macs, "unchanged": True})
                else:
                    (base, ms), loss = probe.paired_ms(pruned), probe.val_loss(pruned)
                    saved[g][r], added[g][r] = base - ms, max(loss - base_loss, 0.0)
                    candidates.append(
                        {"group": g, "ratio": r, "macs": macs, "latency_ms": ms, "base_ms": base, "val_loss": loss}
                    )
                advance()
        base_ms = float(np.median([c["base_ms"] for c in candidates if "base_ms" in c] or [probe.paired_ms(model)[0]]))
        ratios = {g: 0.0 for g in groups}
        goal, rounds = target * base_ms, []
        for _ in range(ROUNDS):
            ratios = _allocate(ratios, saved, added, goal)
            if rounds and ratios == rounds[-1]["ratios"]:
                break  # no measured step left that saves anything
            base_now, measured = probe.paired_ms(
                prune_once(copy.deepcopy(model), probe.size, 0.0, round_to, imp, ratios, keep)
            )
            predicted = base_ms - sum(saved[g][r] for g, r in ratios.items())
            rounds.append(
                {"ratios": dict(ratios), "predicted_ms": predicted, "base_ms": base_now, "measured_ms": measured}
            )
            advance()
            shortfall = measured - (1 - target) * base_now
            if shortfall <= 0:
                break
            goal = (base_ms - predicted) + shortfall  # beyond what this plan promised: the next round must add a step
    reached = 1 - rounds[-1]["measured_ms"] / rounds[-1]["base_ms"]
    if reached < target * 0.9:  # within a tenth of the goal counts: timing on a busy machine moves by that much
        raise EdgetuneError(
            f"--target-latency {target:g}: the best plan found (each of {len(groups)} layer groups of "
            f"{type(model).__name__} pruned by up to {GRID[-1]:.0%}) removed {reached:.0%} of its {probe.runtime} "
            f"{probe.precision} latency ({rounds[-1]['base_ms']:.2f} -> {rounds[-1]['measured_ms']:.2f} ms): its "
            "latency there does not fall that far with its channels. Ask for less, time on another "
            "--latency-runtime, or prune by --ratio or --target-macs."
        )
    logger.info(
        "--target-latency %.2f on %s %s: %.2f -> %.2f ms (%.0f%% less), ratios %s.",
        target,
        probe.runtime,
        probe.precision,
        rounds[-1]["base_ms"],
        rounds[-1]["measured_ms"],
        100 * reached,
        ", ".join(f"{g} {r:.2f}" for g, r in ratios.items() if r),
    )
    return {
        "target": target,
        "runtime": probe.runtime,
        "precision": probe.precision,
        "threads": probe.threads,
        "base_ms": rounds[-1]["base_ms"],
        "base_val_loss": base_loss,
        "candidates_base_ms": base_ms,
        "ratios": ratios,
        "measured_ms": rounds[-1]["measured_ms"],
        "reduction": reached,
        "grid": list(GRID),
        "candidates": candidates,
        "rounds": rounds,
    }


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
            for x in (
                x for x in GRID if x > r
            ):  # any later ratio: a small one may save nothing where a larger one does
                gain, cost = saved[g][x] - saved[g][r], added[g][x] - added[g][r]
                score = gain / max(cost, 1e-4)
                if gain > 0 and score > best_score:
                    best, best_score = (g, x), score
        if best is None:
            break
        ratios[best[0]] = best[1]
    return ratios
