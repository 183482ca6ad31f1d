"""Run the benchmark runner in a fresh process (here, or on a device over SSH) and
turn its output lines into a progress bar and, at the end, its JSON result.

Every artifact gets its own process: its load time and peak memory are its own,
and nothing one runtime allocated slows the next."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime.devicebench import ERROR, PROGRESS
from edgetune.runtime.files import read_json
from edgetune.runtime.timing import Policy

logger = log.get(__name__)

BUNDLE_RUNNER = "edgetune.runtime.devicebench"
TORCH_RUNNER = "edgetune.bench.torchbench"


@dataclass
class RunnerOptions:
    threads: int | None
    batches: list[int]
    policy: Policy
    precision: str | None = None
    runtime: str | None = None

    def args(self, images: str | None) -> list[str]:
        a = [
            "--batch",
            ",".join(map(str, self.batches)),
            "--warmup",
            str(self.policy.warmup),
            "--min-time",
            str(self.policy.min_time_s),
            "--min-runs",
            str(self.policy.min_runs),
        ]
        if self.threads:
            a += ["--threads", str(self.threads)]
        if self.precision:
            a += ["--precision", self.precision]
        if self.runtime:
            a += ["--runtime", self.runtime]
        if images:
            a += ["--images", images]
        return a


class Relay:
    """Feeds a runner's output lines to one task of a rich Progress."""

    def __init__(self, progress, label: str):
        self.progress, self.label = progress, label
        self.task = progress.add_task(f"{label}: starting", total=None) if progress else None
        self.error: dict | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=30)

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith(PROGRESS):
            try:
                p = json.loads(line[len(PROGRESS) :])
            except ValueError:
                return
            if self.progress is not None:
                self.progress.update(
                    self.task,
                    description=f"{self.label}: {p['phase']}",
                    total=p.get("total") or None,
                    completed=p.get("done", 0),
                )
        elif line.startswith(ERROR):
            try:
                self.error = json.loads(line[len(ERROR) :])
            except ValueError:
                self.error = {"message": line[len(ERROR) :]}
        elif line.strip():
            self.tail.append(line)
            logger.debug("%s: %s", self.label, line)

    def done(self) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{self.label}: done", total=1, completed=1)

    def failure(self, where: str, rc: int | None) -> str:
        """Why the runner failed, for the user."""
        if self.error:
            return f"{where}: {self.error.get('message')}"
        tail = "\n".join(list(self.tail)[-12:])
        return f"{where}: the benchmark exited with status {rc}. Its last output:\n{tail}"


def run_local(module: str, artifact: str, opts: RunnerOptions, images: str | None, relay: Relay) -> dict:
    """`python -m module ARTIFACT ...` in a fresh local process; its result."""
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, str(artifact), "--out", str(out), *opts.args(images)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        try:
            for line in proc.stdout:
                relay.feed(line)
            rc = proc.wait()
        except BaseException:  # Ctrl-C: stop the runner too
            proc.kill()
            proc.wait()
            raise
        if rc != 0 or not out.is_file():
            raise EdgetuneError(relay.failure(f"Benchmark of {artifact}", rc))
        relay.done()
        return read_json(out)
