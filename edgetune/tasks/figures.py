"""Saving the figures that tasks' reports draw (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path


def save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from edgetune.runtime.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def image_grid(cells: int, cell: tuple[float, float] = (3.0, 3.3), cols: int = 4, extra_height: float = 0.0):
    """A figure of `cols` image cells a row, enough rows for `cells` (at least one),
    every axis blank until drawn on (the axes array, rows x cols): the galleries of every task's report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-cells // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows + extra_height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes
