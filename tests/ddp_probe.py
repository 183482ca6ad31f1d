"""torchrun's entry point in tests/test_distributed.py: the edgetune CLI, watched.

Each rank records into $EDGETUNE_PROBE_DIR/rank{RANK}.json what the tests check and
the CLI does not report: the training images its DistributedSampler handed it in
each epoch, every file it renamed into place (atomic writes), and a hash of the
model's weights after each training loop; and its process id in rank{RANK}.pid at
start. With $EDGETUNE_PROBE_SLOW (seconds) each training image is handed out that
much later, so that a test can stop a rank mid-epoch. Nothing is replaced: the
real CLI runs."""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

import torch.utils.data

import edgetune.train.loop as loop
from edgetune.cli.main import main
from edgetune.train import distributed

record: dict = {"rank": int(os.environ["RANK"]), "samples": [], "writes": [], "fits": []}

_sampler_iter = torch.utils.data.DistributedSampler.__iter__


def _iter(self):
    indices = list(_sampler_iter(self))
    record["samples"].append({"epoch": self.epoch, "indices": indices})
    slow = float(os.environ.get("EDGETUNE_PROBE_SLOW", 0))
    for i in indices:
        time.sleep(slow)
        yield i


_replace = os.replace


def _replace_logged(src, dst, *args, **kwargs):
    record["writes"].append(str(Path(dst).resolve()))
    return _replace(src, dst, *args, **kwargs)


_fit = loop.fit


def _fit_logged(model, *args, **kwargs):
    result = _fit(model, *args, **kwargs)
    record["fits"].append(
        {"desc": kwargs.get("desc"), "weights": distributed.fingerprint(model), "history": result.history}
    )
    return result


PROBE_DIR = Path(os.environ["EDGETUNE_PROBE_DIR"])


def _dump():
    (PROBE_DIR / f"rank{record['rank']}.json").write_text(json.dumps(record))


torch.utils.data.DistributedSampler.__iter__ = _iter
os.replace = _replace_logged
loop.fit = _fit_logged
atexit.register(_dump)
(PROBE_DIR / f"rank{record['rank']}.pid").write_text(str(os.getpid()))

if __name__ == "__main__":
    main()
