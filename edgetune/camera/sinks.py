"""Where results go: a JSONL or CSV record per frame (and ROI), an annotated video,
a live window. Records are appended and flushed line by line, so the file can be
followed while the line runs and a hard kill loses at most the line being written."""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgetune.errors import EdgetuneError

log = logging.getLogger(__name__)

FIELDS = ["time", "frame", "source", "roi", "class", "score", "latency_ms", "alarm"]


class RecordWriter:
    """JSONL (default, or `.jsonl`/`.json` files) or CSV (`.csv`); '-' is stdout.
    An existing file is appended to: yesterday's records are never overwritten."""

    def __init__(self, path: str | Path | None, fmt: str | None = None):
        self.path = None if path in (None, "-") else Path(path)
        self.format = fmt or ("csv" if self.path and self.path.suffix.lower() == ".csv" else "jsonl")
        self.count = 0
        if self.path is None:
            self._file, self._own = sys.stdout, False
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a+", encoding="utf-8", newline="")
            except OSError as e:
                raise EdgetuneError(
                    f"Records file {self.path} cannot be written: {e.strerror or e}. Choose another --out."
                ) from None
            self._own = True
            self._repair_tail()
        self._csv = (
            csv.DictWriter(self._file, FIELDS, extrasaction="ignore", lineterminator="\n")
            if self.format == "csv"
            else None
        )
        if self._csv and (not self._own or self._file.tell() == 0):
            self._csv.writeheader()

    def _repair_tail(self) -> None:
        """A previous run killed mid-line left a partial line: end it first."""
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(self._file.tell() - 1)
            last = self._file.read(1)
            self._file.seek(0, os.SEEK_END)
            if last != "\n":
                self._file.write("\n")

    def write(self, record: dict) -> None:
        if self._csv:
            self._csv.writerow({k: ("" if v is None else v) for k, v in record.items()})
        else:
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.flush()
            if self._own:
                os.fsync(self._file.fileno())
                self._file.close()


def draw(frame: np.ndarray, labels: list[tuple[object, str, float, bool]], fps: float) -> np.ndarray:
    """Boxes and `class score` per ROI (the whole frame when ROI is None), red on
    alarm, and the pipeline's FPS in the corner."""
    out = frame.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(w, h) / 600)
    thick = max(1, int(round(scale * 2)))
    for roi, cls, score, alarm in labels:
        color = (0, 0, 255) if alarm else (0, 200, 0)
        x, y = (roi.x, roi.y) if roi else (0, 0)
        if roi:
            cv2.rectangle(out, (roi.x, roi.y), (roi.x + roi.w - 1, roi.y + roi.h - 1), color, thick)
        text = f"{roi.name + ': ' if roi else ''}{cls} {score:.2f}"
        _text(out, text, (x + 4, y + int(22 * scale) + 2), scale, color, thick)
    _text(out, f"{fps:.1f} FPS", (4, h - 6), scale, (255, 255, 255), thick)
    return out


def _text(img, text, org, scale, color, thick):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


class AnnotatedVideo:
    """Writes annotated frames to a temporary file beside PATH, renamed on close."""

    CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}

    def __init__(self, path: str | Path, fps: float | None):
        self.path = Path(path)
        if self.path.suffix.lower() not in self.CODECS:
            raise EdgetuneError(f"--video {self.path}: use a .mp4, .avi or .mkv file name.")
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps if fps and 0 < fps < 500 else 25.0
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*self.CODECS[self.path.suffix.lower()]), self.fps, (w, h)
            )
            if not self._writer.isOpened():
                raise EdgetuneError(
                    f"--video {self.path}: OpenCV cannot write this file (check the folder and the extension)."
                )
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            os.replace(self.tmp, self.path)


class Display:
    """A live window when a display exists; otherwise a warning, once."""

    def __init__(self, title: str = "edgetune"):
        self.title = title
        self.enabled = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in (
            "win32",
            "darwin",
        )
        if not self.enabled:
            log.warning("--show: no display here (DISPLAY is not set); running without a window.")
        self.quit = False

    def show(self, frame: np.ndarray) -> None:
        if not self.enabled:
            return
        try:
            cv2.imshow(self.title, frame)
            self.quit = (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)
        except cv2.error as e:  # headless OpenCV build
            log.warning(
                "--show: this OpenCV cannot open windows (%s); running without one.", str(e).strip().splitlines()[-1]
            )
            self.enabled = False

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.title)


class Rate:
    """Frames per second over the last few seconds, for the overlay."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self._times: collections.deque[float] = collections.deque()

    def tick(self) -> float:
        now = time.monotonic()
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
