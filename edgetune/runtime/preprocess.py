"""The one preprocessing definition, executed with OpenCV and numpy.

A `PreprocessSpec` is resolved once at training time (backbone pretrained config +
`--img-size`), saved with the run and the bundle, and applied here on the device.
Training's torch path (`edgetune.data.transforms`) implements the same spec
independently; a parity test holds the two within 1e-5.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class BadImageError(ValueError):
    """An image file that cannot be decoded."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Resize the whole frame to `size` (no crop: defects sit at the edges too),
    convert to RGB float in [0, 1], normalise by mean/std, lay out as NCHW."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    channel_order: str = "RGB"  # what the model expects
    layout: str = "NCHW"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order {self.channel_order!r} must be RGB or BGR")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            size=tuple(int(v) for v in d["size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
            channel_order=d.get("channel_order", "RGB"),
            layout=d.get("layout", "NCHW"),
        )


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to uint8 HxWx3 BGR (OpenCV's order); gray becomes 3 channels."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise BadImageError(f"{name}: not a readable image")
    return to_bgr(img, name)


def to_bgr(img: np.ndarray, name: str = "<frame>") -> np.ndarray:
    """Any decoded frame (gray, BGR, BGRA, 16-bit) as uint8 HxWx3 BGR."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise BadImageError(f"{name}: unsupported pixel type {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise BadImageError(f"{name}: unsupported image shape {img.shape}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 HxWx3 BGR; raise BadImageError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    return decode_image(data, str(path))


_scratch = threading.local()  # per thread: the float copy of the last frame size seen


def _float_frame(frame: np.ndarray) -> np.ndarray:
    """`frame` as float32 in a buffer reused across calls of the same thread: a
    640x480 float frame is 3.7 MB, and a fresh one each call costs page faults and
    pushes the model's weights out of the cache (about 0.2 ms of a 4 ms call)."""
    buf = getattr(_scratch, "frame", None)
    if buf is None or buf.shape != frame.shape:
        buf = _scratch.frame = np.empty(frame.shape, np.float32)
    np.copyto(buf, frame, casting="unsafe")
    return buf


def preprocess(frames: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec, frame_order: str = "BGR") -> np.ndarray:
    """uint8 HxWx3 frames (OpenCV's BGR unless `frame_order` says RGB) to a float32
    NCHW batch exactly as `spec` says."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    h, w = spec.size
    out = np.empty((len(frames), 3, h, w), dtype=np.float32)
    # (x / 255 - mean) / std as one multiply-add per channel, on CHW planes
    # (numpy is slow broadcasting over a last axis of 3).
    gain = (1.0 / (255.0 * np.asarray(spec.std, dtype=np.float64))).astype(np.float32)[:, None, None]
    bias = (-np.asarray(spec.mean, dtype=np.float64) / np.asarray(spec.std, dtype=np.float64)).astype(np.float32)[:, None, None]
    swap = frame_order.upper() != spec.channel_order
    for i, frame in enumerate(frames):
        # Resize in float (no uint8 rounding, so training's torch path can match
        # exactly), then swap channels, scale and normalise the small result:
        # resizing is linear and per channel, so doing it first changes values by
        # float rounding only, at a fraction of the cost.
        img = _float_frame(frame)
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=INTERPOLATIONS[spec.interpolation])
        planes = img.transpose(2, 0, 1)
        np.multiply(planes[::-1] if swap else planes, gain, out=out[i])
        out[i] += bias
    return out
