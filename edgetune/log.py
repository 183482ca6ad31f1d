"""Console output: rich for people, levels from -v/-q. Under torchrun only rank 0
speaks: the other ranks show errors alone (their output would repeat rank 0's)."""

from __future__ import annotations

import contextlib
import logging
import warnings

from rich.console import Console
from rich.logging import RichHandler

from edgetune.torchrun import is_main

console = Console(stderr=True, quiet=not is_main())
_quiet = False


def setup(verbose: int = 0, quiet: bool = False) -> None:
    global _quiet
    _quiet = quiet or not is_main()
    level = (
        logging.ERROR
        if not is_main()
        else logging.WARNING
        if quiet
        else (logging.DEBUG if verbose > 1 else logging.INFO)
    )
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=verbose > 1, show_time=False)],
        force=True,
    )
    # Libraries we drive are chatty at INFO.
    for name in ("nncf", "torch_pruning", "PIL", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    if not is_main():  # rank 0 shows the same warnings
        warnings.simplefilter("ignore")
        for name in ("nncf", "torch", "timm"):
            logging.getLogger(name).setLevel(logging.ERROR)


def quiet() -> bool:
    return _quiet


def print_table(table) -> None:
    """A table for people. At a terminal it fits the terminal; in a log or a CI
    console (no terminal, where rich assumes 80 columns) it keeps its natural width:
    squeezed to 80, a wide table folds every cell to a character or two."""
    if console.is_terminal or console.quiet:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update(width=400)).maximum
    Console(stderr=True, width=max(console.width, min(natural, 400))).print(table)


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)


@contextlib.contextmanager
def progress(desc: str, total: int):
    """A transient rich progress bar; yields `advance(n)`. Silent with -q."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=_quiet,
    ) as bar:
        task = bar.add_task(desc, total=total)
        yield lambda n=1: bar.advance(task, n)
