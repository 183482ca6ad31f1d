"""Capture in its own thread, overlapped with inference.

`latest` keeps one slot and overwrites a frame inference has not taken yet (counted
as dropped): results stay real-time. `every` blocks the reader when the queue is full:
every frame of a file is processed. A live source that stops delivering is reopened
with exponential backoff and the gap is recorded; a file ends (or loops)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from edgetune.camera.source import CorruptFrame
from edgetune.errors import EdgetuneError

log = logging.getLogger(__name__)


@dataclass
class Frame:
    index: int  # position in the source's stream (dropped frames leave gaps)
    image: np.ndarray  # uint8 HxWx3 BGR
    time: str  # capture wall-clock time, ISO 8601 UTC
    t: float  # capture time.monotonic()
    source: str  # the source, or the image file for an image source
    inputs: list | None = None  # (model input, ms to prepare it) per ROI, when prepared in the capture thread


class FrameBuffer:
    """The hand-off between the capture thread and inference."""

    def __init__(self, mode: str, size: int = 8):
        self.latest = mode == "latest"
        self.size = 1 if self.latest else max(1, size)
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Frame, stop: threading.Event) -> None:
        with self._cond:
            if self.latest:
                if len(self._items) >= self.size:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.size and not stop.is_set():
                    self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The next frame; None after `timeout` or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        with self._cond:
            return self._closed and not self._items


@dataclass
class CaptureStats:
    read: int = 0
    corrupt: int = 0
    reconnects: int = 0
    loops: int = 0
    truncated: bool = False
    gaps: list[dict] = field(default_factory=list)


class Capture(threading.Thread):
    """Reads `reader` (already open) into `buffer` until the source ends, `max_frames`
    frames were read, or `stop` is set. `reopen()` gives a fresh reader. `prepare`
    (image -> model inputs), when given, runs here: preprocessing overlaps inference."""

    def __init__(
        self,
        reader,
        reopen: Callable[[], object],
        buffer: FrameBuffer,
        stop: threading.Event,
        *,
        live: bool,
        loop: bool = False,
        max_frames: int | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        prepare: Callable | None = None,
    ):
        super().__init__(name="capture", daemon=True)
        self.reader, self.reopen, self.buffer, self.stop = reader, reopen, buffer, stop
        self.live, self.loop, self.max_frames, self.backoff = live, loop, max_frames, backoff
        self.prepare = prepare
        self.stats = CaptureStats()
        self.error: BaseException | None = None
        self._index = 0
        self._read_at_loop = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set() and (self.max_frames is None or self.stats.read < self.max_frames):
                try:
                    image = self.reader.read()
                except CorruptFrame as e:
                    self._index += e.count
                    self.stats.corrupt += e.count
                    if self.stats.corrupt <= 10 or self.stats.corrupt % 100 == 0:  # no log flood from a bad stream
                        log.warning("Skipped a corrupt frame: %s (%d so far).", e, self.stats.corrupt)
                    continue
                if image is None:
                    if not self._source_ended():
                        break
                    continue
                frame = Frame(
                    self._index,
                    image,
                    datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    time.monotonic(),
                    getattr(self.reader, "current", None) or self.reader.name,
                )
                if self.prepare is not None:
                    frame.inputs = self.prepare(image)
                self._index += 1
                self.stats.read += 1
                self.buffer.put(frame, self.stop)
        except BaseException as e:  # handed to the inference thread, which reports it
            self.error = e
        finally:
            self.buffer.close()
            self.reader.close()

    def _source_ended(self) -> bool:
        """Handle the end of the reader; True to keep reading."""
        if self.live:
            return self._reconnect()
        if self.loop:
            if self.stats.read == self._read_at_loop:
                raise EdgetuneError(f"--loop: {self.reader.name} gave no readable frame in a whole pass; stopping.")
            self._read_at_loop = self.stats.read
            self.reader.close()
            self.reader = self.reopen()
            self.stats.loops += 1
            return True
        announced = getattr(self.reader, "frame_count", 0)
        if announced and self._index < announced:
            log.warning(
                "%s ended at frame %d of the %d its header announces: the file is truncated or damaged. Finished with "
                "what it holds.",
                self.reader.name,
                self._index,
                announced,
            )
            self.stats.truncated = True
        else:
            log.info("%s ended after %d frames.", self.reader.name, self._index)
        return False

    def _reconnect(self) -> bool:
        name = self.reader.name
        self.reader.close()
        lost, started = datetime.now(timezone.utc), time.monotonic()
        log.warning("%s stopped delivering frames after frame %d; reconnecting.", name, self._index - 1)
        delay = self.backoff[0]
        while not self.stop.wait(delay):
            try:
                self.reader = self.reopen()
            except Exception as e:  # the next try may work: the camera may come back
                log.warning(
                    "%s: reconnect failed (%s); next try in %.1f s.",
                    name,
                    str(e).split(". ")[0],
                    min(delay * 2, self.backoff[1]),
                )
                delay = min(delay * 2, self.backoff[1])
                continue
            seconds = time.monotonic() - started
            self.stats.reconnects += 1
            self.stats.gaps.append(
                {
                    "lost": lost.isoformat(timespec="milliseconds"),
                    "after_frame": self._index - 1,
                    "seconds": round(seconds, 3),
                }
            )
            log.warning("%s reconnected after a gap of %.1f s.", name, seconds)
            return True
        return False  # stopped while waiting
