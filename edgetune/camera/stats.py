"""Running statistics: a status line every N seconds and the end-of-run summary."""

from __future__ import annotations

import array
import time

import numpy as np

from edgetune.runtime.timing import summarize


def latency_summary(ms) -> dict:
    """p50/p90/p99/mean/max of per-call latencies in ms, by the timing harness's rules."""
    if not len(ms):
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    s = summarize(np.asarray(ms, dtype=np.float64) / 1e3)
    return {"n": s["n"], **{k: round(s[f"{k}_ms"], 3) for k in ("p50", "p90", "p99", "mean", "max")}}


class Stats:
    def __init__(self):
        self.started = time.monotonic()
        self.frames = 0  # frames inferred
        self.records = 0
        self.alarms = 0
        self.latency = array.array("f")  # ms per model call (preprocess + inference)
        self._mark = (self.started, 0, 0)  # time, frames, latency count at the last status line
        self.ended: float | None = None  # when inference stopped (shutdown after it is not inference time)

    def add(self, latencies_ms: list[float]) -> None:
        self.frames += 1
        self.records += len(latencies_ms)
        self.latency.extend(latencies_ms)

    def interval(self) -> dict:
        """FPS and p50 latency since the last call."""
        now = time.monotonic()
        t0, f0, l0 = self._mark
        self._mark = (now, self.frames, len(self.latency))
        recent = self.latency[l0:]
        return {
            "fps": (self.frames - f0) / (now - t0) if now > t0 else 0.0,
            "p50_ms": float(np.median(recent)) if len(recent) else None,
        }

    def stop(self) -> None:
        """Inference is over: elapsed() and FPS stop counting (the first call wins)."""
        if self.ended is None:
            self.ended = time.monotonic()

    def elapsed(self) -> float:
        """Seconds of inference: up to stop(), or up to now while running."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


def print_summary(s: dict) -> None:
    """The end-of-run summary for people (the JSON file has it all)."""
    from edgetune import log

    lat = s["latency_ms"]
    lines = [
        f"[bold]{s['frames_inferred']}[/] frames from {s['source']} in {s['seconds']:.1f} s of inference "
        f"({s['fps']:.1f} FPS), stopped by {s['stopped_by']}.",
        f"Latency per model call: p50 {_ms(lat['p50'])}, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])}.",
        *(
            [
                f"Shutdown took {s['shutdown_seconds']:.1f} s after inference, {s['alarm_actions_wait_seconds']:.1f} s "
                "of it waiting for alarm actions"
                + (" (still running, not waited for)" if s["alarm_actions_unfinished"] else "")
                + "."
            ]
            if s["shutdown_seconds"] >= 0.5
            else []
        ),
        f"Dropped {s['dropped']}, corrupt {s['corrupt']}, reconnects {s['reconnects']}, alarms {s['alarms']}"
        + (f" ({s['alarm_actions']['failed']} alarm action(s) failed)" if s["alarm_actions"]["failed"] else "")
        + ".",
        f"{s['records']} records -> {s['outputs']['records']}"
        + (f"; video -> {s['outputs']['video']}" if s["outputs"]["video"] else "")
        + (f"; summary -> {s['outputs']['summary']}" if s["outputs"]["summary"] else ""),
    ]
    for line in lines:
        log.console.print(line, highlight=False)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f} ms"
