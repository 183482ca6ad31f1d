"""Where this process stands in a torchrun job, read from the environment torchrun
sets (RANK, WORLD_SIZE, LOCAL_RANK: all three, or the process counts as alone). One
reading for the whole package, at its bottom: logging needs it before torch is
imported, and every layer must agree on which process is rank 0."""

from __future__ import annotations

import os

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Started by torchrun (or anything that sets its environment) with more than one process."""
    return all(k in os.environ for k in ENV) and os.environ["WORLD_SIZE"].strip() not in ("", "0", "1")


def rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def local_rank() -> int:
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def is_main() -> bool:
    """True in the process that logs and writes: rank 0, or the only process."""
    return rank() == 0


def where() -> str:
    """'rank R of N', for messages."""
    return f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}"
