"""Semantic segmentation on the device (torch-free): the model's `mask` (N x H x W
uint8 class indices at the network's input size) and `defect_score` (N: the
largest probability of any pixel not being background) -> one `Segmentation` per
image at the frame's own size.

The network sees the whole frame resized (the manifest's preprocessing); its mask
maps back onto the frame by nearest neighbour, so areas and boxes are in frame
pixels. A result holds the mask, each class's area, and the connected regions of
each defect class (OpenCV, 8-connected) with their boxes; regions smaller than
the manifest's `segment.min_area` pixels are noise: they neither flag the part nor
name its class.

A record's `class` is the defect class with the largest area in regions above the
minimum (else class 0, the background), its `score` that area's share of the image;
`areas` gives every defect class's pixels and `regions` each region's class, area
and box [x, y, w, h] in frame pixels (an ROI's corner added). `--alarm CLASS:Npx`
fires when CLASS covers at least N pixels of the frame (or ROI); `defect:Npx` counts
every defect class together."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.tasks.base import TaskSession

MASK, SCORE = "mask", "defect_score"
DEFAULT_MIN_AREA = 16  # frame pixels: a region below it is noise
ANY_DEFECT = "defect"  # the alarm name of every defect class together
UNIT = "px"


@dataclass(frozen=True)
class Region:
    cls: int
    area: int  # pixels
    box: tuple[int, int, int, int]  # x, y, w, h in the image's pixels


class Segmentation:
    """One image's class map: `net`, the model's (H', W') mask, stands for the
    frame's (H, W) `size` mapped by nearest neighbour (`mask`, made when asked).
    Where the frame is at least the network's size, every network pixel becomes a
    block of frame pixels, so areas, regions and boxes are counted exactly on the
    small map (a camera frame's post-processing stays well under the model call);
    a smaller frame is counted on its own mask."""

    def __init__(self, net: np.ndarray, score: float, min_area: int = DEFAULT_MIN_AREA, size=None):
        self.net = np.ascontiguousarray(net, dtype=np.uint8)
        self.size = (int(size[0]), int(size[1])) if size is not None else self.net.shape
        self.score, self.min_area = float(score), int(min_area)

    @cached_property
    def mask(self) -> np.ndarray:
        """(H, W) uint8 class indices at the image's size."""
        return to_frame(self.net, self.size)

    @cached_property
    def _blocks(self):
        """(row, column) frame-pixel counts of each network pixel; None where the frame is smaller."""
        (h, w), (fh, fw) = self.net.shape, self.size
        return _block_maps(h, w, fh, fw) if fh >= h and fw >= w else None

    @cached_property
    def areas(self) -> np.ndarray:
        """Pixels of each class index (as long as the largest index present)."""
        if self._blocks is None:
            return np.bincount(self.mask.ravel(), minlength=1)
        weights = self._blocks[2]
        return np.rint(np.bincount(self.net.ravel(), weights=weights.ravel(), minlength=1)).astype(np.int64)

    def area(self, cls: int) -> int:
        return int(self.areas[cls]) if cls < len(self.areas) else 0

    @cached_property
    def all_regions(self) -> list[Region]:
        """Every connected region (8-connected) of each defect class, largest first."""
        if self._blocks is None:
            return regions_of(self.mask, self.areas)
        return regions_of(self.net, np.bincount(self.net.ravel(), minlength=1), self._blocks)

    @property
    def regions(self) -> list[Region]:
        """The regions of at least `min_area` pixels."""
        return [r for r in self.all_regions if r.area >= self.min_area]

    @property
    def defective(self) -> bool:
        return bool(self.regions)

    def kept_areas(self) -> dict[int, int]:
        """Defect class -> its pixels in regions of at least `min_area`."""
        out: dict[int, int] = {}
        for r in self.regions:
            out[r.cls] = out.get(r.cls, 0) + r.area
        return out


@functools.lru_cache(maxsize=16)
def _block_maps(h: int, w: int, fh: int, fw: int):
    """For a (h, w) map resized to (fh, fw) by nearest neighbour (fh >= h, fw >= w):
    each source row's first frame row and row count, likewise for columns, and each
    source pixel's frame-pixel count."""
    import cv2

    def axis(n: int, fn: int):
        source = cv2.resize(np.arange(n, dtype=np.uint16)[None, :], (fn, 1), interpolation=cv2.INTER_NEAREST)[0]
        return np.searchsorted(source, np.arange(n)), np.bincount(source, minlength=n)

    (row0, rows), (col0, cols) = axis(h, fh), axis(w, fw)
    return (row0, rows), (col0, cols), np.outer(rows, cols).astype(np.float64)


def regions_of(mask: np.ndarray, areas: np.ndarray | None = None, blocks=None) -> list[Region]:
    """The 8-connected regions of each defect class in `mask`; with `blocks`
    (`_block_maps`), in the frame pixels the mask's pixels stand for."""
    import cv2

    areas = np.bincount(mask.ravel(), minlength=1) if areas is None else areas
    found = []
    for cls in np.flatnonzero(areas[1:]) + 1:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            cv2.compare(mask, int(cls), cv2.CMP_EQ) // 255, connectivity=8
        )
        if blocks is not None:
            (row0, rows), (col0, cols), weights = blocks
            sizes = np.rint(np.bincount(labels.ravel(), weights=weights.ravel(), minlength=n)).astype(int)
        for k in range(1, n):
            x, y, w, h, a = (int(v) for v in stats[k])
            if blocks is not None:
                x1, y1 = col0[x + w - 1] + cols[x + w - 1], row0[y + h - 1] + rows[y + h - 1]
                x, y, w, h, a = int(col0[x]), int(row0[y]), int(x1 - col0[x]), int(y1 - row0[y]), int(sizes[k])
            found.append(Region(int(cls), a, (x, y, w, h)))
    return sorted(found, key=lambda r: -r.area)


def to_frame(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A network-size class map onto a frame of (height, width) `size`, nearest neighbour."""
    import cv2

    h, w = int(size[0]), int(size[1])
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    return mask if mask.shape == (h, w) else cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


class SegmentSession(TaskSession):
    """A runtime session over a segmentation graph (outputs `mask`, `defect_score`)."""

    task = "segment"
    outputs = (MASK, SCORE)
    schema = 3  # a reader before segmentation would read the mask as class scores
    alarm_help = f"CLASS:AREA{UNIT} (pixels of that class in the frame or ROI, e.g. crack:200{UNIT})"
    can_flag = True

    def __init__(self, session, manifest: dict):
        super().__init__(session, manifest)
        self.min_area = int(self.section.get("min_area", DEFAULT_MIN_AREA))

    def decode(self, outputs: dict[str, np.ndarray], sizes) -> list[Segmentation]:
        masks = np.asarray(outputs[MASK])
        masks = masks.reshape(len(sizes), *masks.shape[-2:])
        scores = np.asarray(outputs[SCORE], dtype=np.float32).reshape(-1) if SCORE in outputs else np.zeros(len(sizes))
        if masks.dtype != np.uint8:  # a PyTorch session gives every output as float
            masks = np.rint(masks).astype(np.uint8)
        return [Segmentation(m, float(s), self.min_area, size) for m, s, size in zip(masks, scores, sizes)]

    # --- the camera line --------------------------------------------------------

    def record(self, result: Segmentation, origin=(0, 0)) -> dict:
        kept = result.kept_areas()
        top = max(kept, key=lambda c: (kept[c], -c)) if kept else 0
        total = max(result.size[0] * result.size[1], 1)
        share = kept[top] / total if kept else result.area(0) / total
        ox, oy = int(origin[0]), int(origin[1])
        return {
            "class": self.classes[top],
            "score": round(float(share), 5),
            "defect_score": round(result.score, 4),
            "areas": {self.classes[c]: result.area(c) for c in range(1, len(self.classes)) if result.area(c)},
            "regions": [
                {"class": self.classes[r.cls], "area": r.area, "box": [r.box[0] + ox, r.box[1] + oy, *r.box[2:]]}
                for r in result.regions
            ],
        }

    def alarm_names(self) -> list[str]:
        defects = list(self.classes[1:])
        return defects + ([ANY_DEFECT] if ANY_DEFECT not in defects else [])

    def alarm_values(self, result: Segmentation) -> dict[str, float]:
        values = {c: float(result.area(k)) for k, c in enumerate(self.classes) if k}
        values.setdefault(ANY_DEFECT, float(result.size[0] * result.size[1] - result.area(0)))
        return values

    def check_alarm(self, rule) -> None:
        if rule.cls not in self.alarm_names():
            raise EdgetuneError(
                f"--alarm {rule}: a segmentation bundle alarms on the area of a defect class; it has "
                f"{', '.join(self.alarm_names())}. Give {self.alarm_help}."
            )
        if rule.unit != UNIT:
            raise EdgetuneError(
                f"--alarm {rule}: a segmentation bundle alarms on a class's area in pixels of the frame (or ROI); "
                f"give it with the unit {UNIT}, e.g. {rule.cls}:200{UNIT}."
            )

    def flagged(self, result: Segmentation) -> bool:
        return result.defective

    def draw(self, image: np.ndarray, result: Segmentation) -> np.ndarray:
        return mask_overlay(image, result.mask)

    # --- results between processes -------------------------------------------------

    @classmethod
    def to_json(cls, result: Segmentation) -> dict:
        return {"mask": run_lengths(result.mask), "score": result.score, "min_area": result.min_area}

    @classmethod
    def from_json(cls, data: dict) -> Segmentation:
        return Segmentation(from_run_lengths(data["mask"]), float(data["score"]), int(data["min_area"]))

    @classmethod
    def headline(cls, metrics: dict) -> str:
        miou, defects = metrics.get("miou"), metrics.get("miou_defects")
        if not isinstance(miou, float):
            return "mIoU -"
        return f"mIoU {miou:.4f} (defect classes {defects:.4f})" if isinstance(defects, float) else f"mIoU {miou:.4f}"

    @classmethod
    def describe(cls, manifest: dict) -> str | None:
        s = manifest.get(cls.task) or {}
        h, w = s.get("mask_size") or ["?", "?"]
        return (
            f"task segment: outputs mask (N, {h}, {w}) uint8 class indices and defect_score (N); the mask is mapped "
            f"back onto each frame by nearest neighbour; regions below {s.get('min_area', DEFAULT_MIN_AREA)} px are "
            f"noise; class 0 is the background ({manifest.get('classes', ['?'])[0]})"
        )


# --- the mask as JSON and as an overlay ------------------------------------------------


def run_lengths(mask: np.ndarray) -> dict:
    """A class map as runs of equal values in row-major order (small for masks of few regions)."""
    flat = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1]) if flat.size else np.zeros(0, int)
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return {"shape": list(mask.shape), "values": flat[starts].tolist(), "lengths": lengths.tolist()}


def from_run_lengths(data: dict) -> np.ndarray:
    values = np.asarray(data["values"], dtype=np.uint8)
    return np.repeat(values, np.asarray(data["lengths"], dtype=np.int64)).reshape(data["shape"])


# BGR colours of classes 1, 2, ... (class 0, background, is left as it is)
PALETTE = np.array(
    [(0, 0, 255), (0, 200, 255), (255, 0, 255), (255, 128, 0), (0, 255, 0), (255, 255, 0), (128, 0, 255)], np.uint8
)


def class_colours(n: int) -> np.ndarray:
    """(n, 3) BGR colours, class 0 black."""
    return np.concatenate([np.zeros((1, 3), np.uint8), PALETTE[np.arange(max(n - 1, 0)) % len(PALETTE)]])


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Each defect class's pixels tinted in its colour and outlined, on a BGR image of any size."""
    import cv2

    mask = to_frame(mask, image.shape[:2])
    colours = class_colours(int(mask.max()) + 1)
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    on = mask > 0
    out[on] = (out[on].astype(np.float32) * (1 - alpha) + colours[mask[on]].astype(np.float32) * alpha).astype(np.uint8)
    for cls in np.unique(mask[on]):
        contours, _ = cv2.findContours((mask == cls).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in colours[cls]), 1)
    return out
