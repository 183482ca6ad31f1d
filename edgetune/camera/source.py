"""Frame sources: a camera (index or /dev/video path), a video file, an RTSP/HTTP
stream, or a directory/glob of images. Each reader yields uint8 BGR frames; a frame
that cannot be decoded raises `CorruptFrame` (skipped and counted), the end of the
source (or a lost camera) returns None."""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.preprocess import BadImageError, read_image, to_bgr

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DEVICE = re.compile(r"^/dev/video\d+$")
# Read attempts past a failed frame before a file counts as ended: a damaged
# packet mid-file fails once, the real end fails every time.
_FILE_RETRIES = 5
# Streams must not hang the line forever when the network goes away.
_STREAM_TIMEOUT_MS = 5000


class CorruptFrame(Exception):
    """Frames that were read but cannot be decoded (`count` of them)."""

    def __init__(self, message: str, count: int = 1):
        super().__init__(message)
        self.count = count


@dataclass(frozen=True)
class SourceSpec:
    text: str  # what the user gave
    kind: str  # camera | stream | file | images
    target: int | str  # camera index, device path, URL, file path or image-list pattern

    @property
    def live(self) -> bool:
        """Live sources are reopened on loss; files and images end."""
        return self.kind in ("camera", "stream")


def parse_source(text: str) -> SourceSpec:
    """Classify SRC without opening it."""
    text = str(text).strip()
    if not text:
        raise EdgetuneError(
            "--source is empty: give a camera index (0), a device (/dev/video0), a video file, a stream URL or an "
            "image directory/glob."
        )
    if text.isdigit():
        return SourceSpec(text, "camera", int(text))
    if _DEVICE.match(text):
        return SourceSpec(text, "camera", text)
    if _URL.match(text):
        return SourceSpec(text, "stream", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec(text, "images", str(path))
    if any(ch in text for ch in "*?["):
        return SourceSpec(text, "images", str(path))
    if path.is_file():
        return SourceSpec(text, "images" if path.suffix.lower() in IMAGE_EXTENSIONS else "file", str(path))
    raise EdgetuneError(
        f"Source '{text}' does not exist. Give a camera index (0), a device path (/dev/video0), a video file, "
        "an rtsp:// or http:// URL, or an image directory or glob ('images/*.png')."
    )


class VideoReader:
    """Camera, file or stream through cv2.VideoCapture."""

    def __init__(self, spec: SourceSpec, width: int | None = None, height: int | None = None, fps: float | None = None):
        self.spec = spec
        self.name = spec.text
        if not log.isEnabledFor(logging.DEBUG):  # OpenCV's backend probing warnings; our message says what failed
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        self._retries = _FILE_RETRIES if spec.kind == "file" else 0
        if spec.kind == "stream":
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                _STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                _STREAM_TIMEOUT_MS,
            ]
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        elif spec.kind == "file":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG)
        else:
            cap = cv2.VideoCapture(spec.target)
        if not cap.isOpened():
            cap.release()
            raise EdgetuneError(_cannot_open(spec))
        if spec.kind == "camera":
            # Requests: the driver picks the closest mode it has; what it chose is logged.
            if width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            if height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
        self.cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or None
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if spec.kind == "file" else 0
        self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if (
            (width and self.size[0] != width)
            or (height and self.size[1] != height)
            or (fps and self.fps and abs(self.fps - fps) > 0.5)
        ):
            log.warning(
                "%s: asked for %sx%s at %s fps, got %dx%d at %s fps.",
                self.name,
                width or "-",
                height or "-",
                fps or "-",
                *self.size,
                self.fps,
            )

    def read(self) -> np.ndarray | None:
        failures = 0
        while not self.cap.grab():
            failures += 1
            if failures > self._retries:
                return None
        ok, frame = self.cap.retrieve()
        if failures or not ok or frame is None or frame.size == 0:
            # A file that failed to grab, then went on, had a damaged frame there.
            raise CorruptFrame(f"{self.name}: {max(failures, 1)} frame(s) could not be decoded", max(failures, 1))
        try:
            return to_bgr(frame, self.name)
        except BadImageError as e:
            raise CorruptFrame(str(e), 1) from None

    def close(self) -> None:
        self.cap.release()


class ImageReader:
    """Images of a directory (sorted) or a glob pattern, one frame each."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.name = spec.text
        self.fps = None
        self.paths = image_paths(spec)
        self.frame_count = len(self.paths)
        self.current: str | None = None
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self.paths):
            return None
        self.current = self.paths[self._next]
        self._next += 1
        try:
            return read_image(self.current)
        except BadImageError as e:
            raise CorruptFrame(str(e), 1) from None

    def close(self) -> None:
        pass


def image_paths(spec: SourceSpec) -> list[str]:
    if Path(spec.target).is_dir():
        paths = sorted(
            str(p) for p in Path(spec.target).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        what = f"directory {spec.text} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    else:
        paths = sorted(p for p in glob.glob(os.path.expanduser(str(spec.target)), recursive=True) if os.path.isfile(p))
        what = f"glob '{spec.text}' matches no files"
    if not paths:
        raise EdgetuneError(f"Source {what}. Check the path, or quote the glob so the shell leaves it alone.")
    return paths


def open_source(spec: SourceSpec, width: int | None = None, height: int | None = None, fps: float | None = None):
    """Open a reader (raises EdgetuneError when it cannot be opened)."""
    if spec.kind == "images":
        return ImageReader(spec)
    return VideoReader(spec, width, height, fps)


def _cannot_open(spec: SourceSpec) -> str:
    hint = {
        "camera": "Check that the camera is plugged in, that no other program holds it, and that this user may open "
        "it (group 'video'); `v4l2-ctl --list-devices` lists cameras.",
        "stream": "Check the URL, credentials and network, and that the stream is running (try it in ffplay or VLC).",
        "file": "The file is not a video OpenCV's FFmpeg can decode (damaged, or an unsupported codec).",
    }[spec.kind]
    return f"Source '{spec.text}' ({spec.kind}) cannot be opened. {hint}"
