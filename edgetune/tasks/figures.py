"""Saving the figures that tasks' reports draw (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path


def save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from edgetune.runtime.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
