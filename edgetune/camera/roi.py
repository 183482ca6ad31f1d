"""Named regions of interest: several parts in one camera view, each classified
on its own. Written `NAME=x,y,w,h` (pixels of the full frame) on the command line,
or in the config as a list of those strings or a mapping NAME: "x,y,w,h"."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgetune.errors import EdgetuneError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Roi:
    name: str
    x: int
    y: int
    w: int
    h: int

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return frame[self.y : self.y + self.h, self.x : self.x + self.w]

    def fits(self, width: int, height: int) -> bool:
        return self.x + self.w <= width and self.y + self.h <= height


def parse_roi(name: str, box) -> Roi:
    """One ROI from a name and "x,y,w,h" (or a list of 4 numbers); ValueError says why not."""
    name = str(name).strip()
    if not _NAME.match(name):
        raise ValueError(f"ROI name {name!r} must be letters, digits, '_', '-' or '.'")
    parts = box.split(",") if isinstance(box, str) else list(box) if isinstance(box, (list, tuple)) else None
    try:
        x, y, w, h = (int(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"ROI {name!r}: {box!r} is not x,y,w,h (four integers, in pixels)") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"ROI {name!r}: x and y must be >= 0 and w, h > 0, got {x},{y},{w},{h}")
    return Roi(name, x, y, w, h)


def parse_rois(value) -> tuple[Roi, ...]:
    """`NAME=x,y,w,h`, or a mapping of such; ValueError says what is wrong."""
    if isinstance(value, Roi):
        return (value,)
    if isinstance(value, dict):
        return tuple(parse_roi(k, v) for k, v in value.items())
    text = str(value)
    name, sep, box = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not NAME=x,y,w,h (e.g. left=0,0,320,480)")
    return (parse_roi(name, box),)


def check_rois(rois: list[Roi], width: int, height: int, source: str) -> None:
    """All ROIs inside the frame and named once; else the user's mistake."""
    names = [r.name for r in rois]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EdgetuneError(f"ROI name(s) {', '.join(dup)} given more than once: each ROI needs its own name.")
    for r in rois:
        if not r.fits(width, height):
            raise EdgetuneError(
                f"ROI '{r.name}' ({r.x},{r.y},{r.w},{r.h}) reaches outside the {width}x{height} frames of {source}: "
                "x+w must be <= width and y+h <= height."
            )
