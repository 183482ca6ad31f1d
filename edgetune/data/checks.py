"""Find unreadable images before training starts, all at once."""

from __future__ import annotations

from PIL import Image

from edgetune.data.sources import Source
from edgetune.errors import EdgetuneError


def image_problem(path: str) -> str | None:
    """Why `path` cannot be used as an image, or None when it can."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except Exception as e:  # PIL raises many types for bad files
        return str(e).split("\n")[0] or type(e).__name__
    return None


def drop_bad_images(source: Source, skip_bad: bool, log=None) -> Source:
    bad = [(it.path, why) for it in source.items if (why := image_problem(it.path))]
    if bad and not skip_bad:
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:50]) + (
            f"; and {len(bad) - 50} more" if len(bad) > 50 else ""
        )
        raise EdgetuneError(
            f"--data {source.spec}: {len(bad)} image(s) cannot be read: {listing}. Fix or remove them, or pass "
            "--skip-bad to leave them out (they are recorded in the run)."
        )
    if bad:
        bad_paths = {p for p, _ in bad}
        groups = {it.keys[1] for it in source.items}
        source.items = [it for it in source.items if it.path not in bad_paths]
        source.skipped = sorted(bad_paths)
        if log:
            log.warning("Skipped %d unreadable image(s) (--skip-bad); they are listed in split.json.", len(bad))
        empty = [source.group_name(g) for g in sorted(groups - {it.keys[1] for it in source.items})]
        if empty:
            raise EdgetuneError(
                f"--data {source.spec}: after skipping unreadable images, class(es) {', '.join(empty)} have no images "
                "left."
            )
    return source
