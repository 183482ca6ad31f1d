"""Console output: rich for people, levels from -v/-q."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)
_quiet = False


def setup(verbose: int = 0, quiet: bool = False) -> None:
    global _quiet
    _quiet = quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=verbose > 1, show_time=False)], force=True)
    # Libraries we drive are chatty at INFO.
    for name in ("nncf", "torch_pruning", "PIL", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def quiet() -> bool:
    return _quiet


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
