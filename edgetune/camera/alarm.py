"""Debounced alarms and what they trigger.

`NAME:THRESHOLD` fires when the value the bundle's task gives NAME (a class's
probability; ...) is >= THRESHOLD on K consecutive frames (per ROI), once, and
re-arms after a frame below it. A threshold may carry a unit where the task
measures one (`Crack:200px`). An alarm runs the user's
command with the record as JSON on stdin and/or posts it to a webhook, in a worker
thread: a slow or failing action is logged and counted, never stops inference."""

from __future__ import annotations

import json
import logging
import queue
import shlex
import subprocess
import threading
import urllib.request
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlarmRule:
    cls: str
    threshold: float
    unit: str = ""  # "" for a score in (0, 1]; else what the task measures ("px", ...)

    def __str__(self) -> str:
        return f"{self.cls}:{self.threshold:g}{self.unit}"


def parse_alarm(text: str) -> AlarmRule:
    cls, sep, thr = str(text).rpartition(":")
    number = thr.rstrip("abcdefghijklmnopqrstuvwxyz%")
    unit = thr[len(number) :]
    try:
        threshold = float(number)
    except ValueError:
        threshold = -1.0
    if not sep or not cls or threshold <= 0.0 or (not unit and threshold > 1.0):
        raise ValueError(
            f"{text!r} is not CLASS:THRESHOLD with a threshold in (0, 1], e.g. defective:0.8 (or a size where the task "
            "measures one, e.g. Crack:200px)"
        )
    return AlarmRule(cls, threshold, unit)


class Debouncer:
    """Counts consecutive frames over the threshold; True on the K-th only."""

    def __init__(self, frames: int):
        self.frames = frames
        self.run = 0

    def update(self, over: bool) -> bool:
        self.run = self.run + 1 if over else 0
        return self.run == self.frames


class Alarms:
    """The rules, one debouncer per (rule, ROI), the events kept for the summary."""

    KEEP = 1000  # events kept in the summary; the records hold them all

    def __init__(self, rules: list[AlarmRule], frames: int, actions: "AlarmActions"):
        self.rules, self.frames, self.actions = rules, frames, actions
        self._debounce: dict[tuple, Debouncer] = {}
        self.count = 0
        self.events: list[dict] = []

    def check(self, values: dict[str, float], record: dict) -> list[AlarmRule]:
        """Update the debouncers with one record's values (name -> what a rule on that
        name compares: a class's probability, ...); fire (log, run the actions) and
        return the rules that fire on it."""
        fired = []
        for rule in self.rules:
            score = float(values.get(rule.cls, 0.0))
            debouncer = self._debounce.setdefault((rule, record["roi"]), Debouncer(self.frames))
            if debouncer.update(score >= rule.threshold):
                fired.append((rule, score))
        if fired:
            record["alarm"] = ";".join(str(rule) for rule, _ in fired)
        for rule, score in fired:
            self._fire(rule, score, record)
        return [rule for rule, _ in fired]

    def _fire(self, rule: AlarmRule, score: float, record: dict) -> None:
        where = f" on ROI '{record['roi']}'" if record["roi"] else ""
        log.warning(
            "ALARM %s%s at frame %d (%s score %.3f >= %g on %d consecutive frames).",
            rule.cls,
            where,
            record["frame"],
            rule.cls,
            score,
            rule.threshold,
            self.frames,
        )
        event = {**record, "alarm": str(rule), "alarm_score": round(score, 4)}
        self.count += 1
        if len(self.events) < self.KEEP:
            self.events.append(event)
        self.actions.submit(event)


class AlarmActions:
    """Runs the alarm actions one after another in a background thread."""

    def __init__(self, command: str | None = None, webhook: str | None = None, timeout: float = 10.0):
        self.argv = shlex.split(command) if command else None
        self.webhook, self.timeout = webhook, timeout
        self.failures = 0
        self.done = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="alarm-actions", daemon=True)
        if self.argv or self.webhook:
            self._thread.start()

    def submit(self, record: dict) -> None:
        if self._thread.is_alive():
            self._queue.put(record)

    @property
    def running(self) -> bool:
        """An action is still running (or queued) after close() stopped waiting."""
        return self._thread.is_alive()

    def close(self, wait: float = 15.0) -> None:
        """Let queued actions finish (up to `wait` seconds)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(wait)
            if self._thread.is_alive():
                log.warning("Alarm actions still running after %.0f s; not waiting for them.", wait)

    def _work(self) -> None:
        while (record := self._queue.get()) is not None:
            payload = json.dumps(record).encode()
            if self.argv:
                self._run(payload, record)
            if self.webhook:
                self._post(payload, record)

    def _run(self, payload: bytes, record: dict) -> None:
        try:
            proc = subprocess.run(self.argv, input=payload, capture_output=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._failed(f"alarm command {shlex.join(self.argv)} could not run: {e}", record)
            return
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            self._failed(
                f"alarm command {shlex.join(self.argv)} exited {proc.returncode}" + (f": {err[-1]}" if err else ""),
                record,
            )
        else:
            self.done += 1

    def _post(self, payload: bytes, record: dict) -> None:
        req = urllib.request.Request(
            self.webhook, data=payload, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
            self.done += 1
        except Exception as e:  # any network failure is reported, inference goes on
            self._failed(f"alarm webhook {self.webhook} failed: {e}", record)

    def _failed(self, message: str, record: dict) -> None:
        self.failures += 1
        log.error("%s (alarm %s at frame %s; inference continues).", message, record.get("alarm"), record.get("frame"))
