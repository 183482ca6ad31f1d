"""THE timing harness. Torch-free: the same code times a bundle on this machine,
the PyTorch baseline, and a bundle on the device.

A measurement is: `warmup` untimed calls (lazy allocation, kernel selection, caches),
then timed calls until BOTH `min_time_s` has passed and `min_runs` calls were made.
Every sample is kept: percentiles include the outliers (a stall is part of what a
production line sees), and mean/std are over all samples too.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

# Progress callback: (samples so far, seconds so far); may be called often.
Progress = Callable[[int, float], None]


@dataclass(frozen=True)
class Policy:
    warmup: int = 10
    min_time_s: float = 2.0
    min_runs: int = 50

    def __post_init__(self):
        if self.warmup < 0 or self.min_runs < 1 or self.min_time_s < 0:
            raise ValueError(f"timing policy needs warmup >= 0, min_runs >= 1 and min_time_s >= 0, not {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Timing:
    """The samples of one measurement, in seconds, in call order."""

    samples_s: list[float] = field(default_factory=list)
    warmup: int = 0

    @property
    def total_s(self) -> float:
        return float(sum(self.samples_s))

    def stats(self) -> dict:
        return summarize(self.samples_s)


def summarize(samples_s) -> dict:
    """p50/p90/p99 (linear interpolation between order statistics), mean, std
    (population), min and max, in milliseconds; no sample is dropped."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timing samples")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "total_s": float(ms.sum() / 1e3),
    }


def time_call(fn: Callable[[], object], policy: Policy = Policy(), progress: Progress | None = None) -> Timing:
    """Time `fn()` per `policy`. Each sample is one call, measured with the
    monotonic high-resolution clock around the call alone."""
    for _ in range(policy.warmup):
        fn()
    clock = time.perf_counter
    samples: list[float] = []
    start = clock()
    elapsed = 0.0
    while len(samples) < policy.min_runs or elapsed < policy.min_time_s:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if progress is not None:
            progress(len(samples), elapsed)
    return Timing(samples, policy.warmup)


def time_alternating(
    fns: dict[str, Callable[[], object]], policy: Policy = Policy(), rounds: int = 5, progress: Progress | None = None
) -> dict[str, Timing]:
    """Time several calls in `rounds` alternating blocks, each block a `policy`
    measurement with 1/rounds of its time and runs (and its own warmup): the
    machine's drift (clocks, heat, other load) falls on every call alike, so their
    difference means something. Samples of one call are pooled over its blocks."""
    rounds = max(1, min(rounds, policy.min_runs))  # no more samples than asked for, when few are
    block = Policy(policy.warmup, policy.min_time_s / rounds, math.ceil(policy.min_runs / rounds))
    out = {name: Timing([], policy.warmup) for name in fns}
    done, spent = 0, 0.0
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time_call(fn, block)
            out[name].samples_s += t.samples_s
            done, spent = done + len(t.samples_s), spent + t.total_s
            if progress is not None:
                progress(done, spent)
    return out


def throughput_fps(batch: int, timing: Timing) -> float:
    """Images per second over the whole measurement at this batch size."""
    return batch * len(timing.samples_s) / timing.total_s if timing.total_s > 0 else math.inf


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. ru_maxrss would
    carry over the peak of the process that forked us (e.g. a 1 GB torch parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
