"""The stage cache: one JSON per finished stage in OUT/stages/, written last and
atomically. A stage whose inputs hash is unchanged is skipped; one that was
interrupted with the same hash is resumed; `force` redoes everything."""

from __future__ import annotations

import time
from pathlib import Path

from edgetune import __version__, log
from edgetune.runtime.files import read_json, sha256_file, sha256_json, write_json
from edgetune.stages.base import Result, Stage
from edgetune.train import distributed

logger = log.get(__name__)
STAGES_DIR = "stages"


class StageCache:
    def __init__(self, out: Path, force: bool):
        self.out, self.dir, self.force = out, out / STAGES_DIR, force

    def _path(self, name: str, pending: bool = False) -> Path:
        return self.dir / f"{name}{'.pending' if pending else ''}.json"

    def done(self, name: str, key: str) -> dict | None:
        path = self._path(name)
        if self.force or not path.is_file():
            return None
        rec = read_json(path)
        return rec if rec.get("inputs_hash") == key else None

    def pending_key(self, name: str) -> str | None:
        path = self._path(name, pending=True)
        return read_json(path).get("inputs_hash") if path.is_file() else None

    def run(self, stage: Stage, inputs: list[Result]) -> Result:
        """`stage`'s result: the cached one when its key is unchanged and its
        output still on disk, else a fresh (or resumed) run of it. Under torchrun
        rank 0 reads and writes the records, and every rank follows its decision."""
        key = stage.key([r.key for r in inputs])
        rec, resume = distributed.on_main(lambda: self._decide(stage, key))
        if rec is not None:
            logger.info("[bold]%s[/]: unchanged (inputs %s), skipped.", stage.name, key[:12], extra={"markup": True})
            return Result(stage.name, key, rec["output"], cached=True)
        logger.info(
            "[bold]%s[/]: %s (inputs %s).",
            stage.name,
            "resuming" if resume else "running",
            key[:12],
            extra={"markup": True},
        )
        started = time.time()
        main = distributed.is_main()
        if main:
            write_json(
                self._path(stage.name, pending=True),
                {"stage": stage.name, "inputs_hash": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            )
            self._path(stage.name).unlink(missing_ok=True)
        output = stage.run(inputs, self.out, resume)
        if main:
            write_json(
                self._path(stage.name),
                {
                    "stage": stage.name,
                    "inputs_hash": key,
                    "output": output,
                    "seconds": round(time.time() - started, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            self._path(stage.name, pending=True).unlink(missing_ok=True)
        return Result(stage.name, key, output)

    def _decide(self, stage: Stage, key: str) -> tuple[dict | None, bool]:
        """(the finished record to reuse, or None; whether to resume an interrupted run)."""
        rec = self.done(stage.name, key)
        if rec is not None and stage.still_there(self.out, rec["output"]):
            return rec, False
        return None, not self.force and self.pending_key(stage.name) == key


def data_fingerprint(data: str) -> str:
    """Cheap identity of the training images: a folder's file names, sizes and
    modification times; a CSV's bytes and the files it lists; else the name."""
    path = Path(data)
    if path.is_dir():
        entries = sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()
        )
        return sha256_json(entries)
    if path.is_file():
        return sha256_file(path)
    return sha256_json({"data": data, "edgetune": __version__})
