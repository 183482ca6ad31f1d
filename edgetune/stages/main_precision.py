"""Which artifact a bundle ships as its main one. The profile names a precision
(INT8 for every built-in profile), but INT8 is not always faster: a family whose
layers do not fuse into integer kernels (or a tiny model, where the quantize and
dequantize steps cost more than they save) can run slower than its fp32 sibling.
So the compile stage times INT8 against fp32 on this machine's runtime, in
alternating bursts (the machine's drift falls on both alike), and ships the
faster one; the build's `--precision` forces a choice instead. Where the target's
runtime does not run here (TensorRT), nothing is measured and the profile decides.
The choice and its numbers go into the manifest (`precision_choice`), the build
summary and `inspect`."""

from __future__ import annotations

import numpy as np

from edgetune import log

logger = log.get(__name__)
# INT8 counts as slower beyond this ratio of p50s. 1.0: INT8 ships only when it is measured faster.
# A tolerance (INT8 is four times smaller) was tried: MobileNetV3's INT8 on ONNX Runtime reads
# 0.91-0.96x its fp32 from build to build, so a 5% margin shipped the slower file in some builds.
SLOWER = 1.0


def paired_speed(target, dest, arts: dict, spec, threads: int | None = None) -> dict | None:
    """INT8's and fp32's p50 at batch 1, from alternating bursts; None where there
    is nothing to compare or the runtime does not run on this machine."""
    from edgetune.runtime.timing import Policy, time_alternating

    runtime = target.eval_runtime()
    if "int8" not in arts or "fp32" not in arts or runtime != target.runtime:
        return None
    sessions = {p: target.load(dest, {**arts[p], "runtime": runtime}, spec, threads) for p in ("int8", "fp32")}
    x = np.random.default_rng(0).standard_normal((1, 3, *spec.size)).astype(np.float32)
    fns = {p: (lambda s=s: s.run_outputs(x)) for p, s in sessions.items()}
    t = time_alternating(fns, Policy(warmup=5, min_time_s=2.0, min_runs=50), rounds=5)
    int8, fp32 = (t[p].stats()["p50_ms"] for p in ("int8", "fp32"))
    return {
        "runtime": runtime,
        "int8_ms_p50": round(int8, 4),
        "fp32_ms_p50": round(fp32, 4),
        "speedup": round(fp32 / int8, 3),
    }


def choose(profile, speed: dict | None, forced: str | None) -> dict:
    """The manifest's `precision_choice`: the main artifact's precision and why."""
    choice = {"profile": profile.precision, "forced": forced, "speed": speed}
    slower = speed is not None and speed["int8_ms_p50"] > SLOWER * speed["fp32_ms_p50"]
    if forced:
        choice.update(precision=forced, reason=f"--precision {forced}")
    elif profile.precision == "int8" and slower:
        choice.update(precision="fp32", reason="int8 slower than fp32 here")
    else:
        choice.update(precision=profile.precision, reason="the profile's")
    choice["int8_slower"] = slower
    if slower:
        choice["note"] = (
            f"INT8 ran {1 / speed['speedup']:.2f}x slower than fp32 on {speed['runtime']} on this machine "
            f"(p50 {speed['int8_ms_p50']:.3f} vs {speed['fp32_ms_p50']:.3f} ms, alternating bursts): the main "
            + (
                f"artifact is {forced}, as --precision asks."
                if forced
                else "artifact is fp32 (build --precision int8 keeps INT8)."
            )
        )
        logger.warning("%s: %s", profile.name, choice["note"])
    return choice
