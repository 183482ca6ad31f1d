"""The one preprocessing definition, executed with OpenCV and numpy.

A `PreprocessSpec` is resolved once at training time (backbone pretrained config +
`--img-size`), saved with the run and the bundle, and applied here on the device.
Training (`edgetune.data.transforms`) calls `preprocess` too, so the model sees the
same numbers in training and on the device; a parity test holds the whole path
(PIL decoding there, OpenCV here) to 1e-5.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
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
    convert to RGB float in [0, 1], normalise by mean/std, lay out as NCHW.

    `resize_dtype` says what is resized: "uint8", the frame itself (rounded to whole
    grey levels; runs made since), or "float32", a float copy of the frame (runs
    made before, whose specs lack the field: they keep the numbers they trained on)."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    channel_order: str = "RGB"  # what the model expects
    layout: str = "NCHW"
    resize_dtype: str = "uint8"

    def __post_init__(self):
        for name in ("size", "mean", "std"):  # tuples whatever was given: the spec is hashable (a cache key)
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order {self.channel_order!r} must be RGB or BGR")
        if self.resize_dtype not in ("uint8", "float32"):
            raise ValueError(f"resize_dtype {self.resize_dtype!r} must be uint8 or float32")

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
            resize_dtype=d.get("resize_dtype", "float32"),  # written before the field existed: a float resize
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


@lru_cache(maxsize=8)
def _affine(spec: PreprocessSpec) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(x / 255 - mean) / std as gain * x + bias, per channel."""
    gain = tuple(1.0 / (255.0 * s) for s in spec.std)
    bias = tuple(-m / s for m, s in zip(spec.mean, spec.std))
    return gain, bias


def preprocess(frames: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec, frame_order: str = "BGR") -> np.ndarray:
    """uint8 HxWx3 frames (OpenCV's BGR unless `frame_order` says RGB) to a float32
    NCHW batch exactly as `spec` says. Training calls this same function
    (`edgetune.data.transforms`), so device and training inputs are bit-identical."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    h, w = spec.size
    out = np.empty((len(frames), 3, h, w), dtype=np.float32)
    gain, bias = _affine(spec)
    swap = frame_order.upper() != spec.channel_order
    interpolation = INTERPOLATIONS[spec.interpolation]
    for i, frame in enumerate(frames):
        # A uint8 resize rounds to whole grey levels (and clips bicubic overshoot);
        # the float one writes and reads a 3.7 MB copy of a 640x480 frame, which
        # also pushes the model's weights out of the cache: end to end it cost
        # 0.6-0.9 ms over the model call where the uint8 resize costs 0.2-0.4 ms.
        # Either way, resizing comes first: it is linear and per channel, so scaling
        # the small result changes values by float rounding only.
        if spec.resize_dtype == "float32":
            frame = _float_frame(frame)
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=interpolation)
        planes = cv2.split(frame)
        if swap:
            planes = planes[::-1]
        for c, plane in enumerate(planes):  # contiguous planes: numpy is slow over a last axis of 3
            np.multiply(plane, np.float32(gain[c]), out=out[i, c], dtype=np.float32)
            out[i, c] += np.float32(bias[c])
    return out


_scratch = threading.local()  # per thread: the float copy of the last frame size seen


def _float_frame(frame: np.ndarray) -> np.ndarray:
    """`frame` as float32 in a buffer reused across calls of the same thread (a
    fresh 3.7 MB array each call costs page faults as well)."""
    buf = getattr(_scratch, "frame", None)
    if buf is None or buf.shape != frame.shape:
        buf = _scratch.frame = np.empty(frame.shape, np.float32)
    np.copyto(buf, frame, casting="unsafe")
    return buf
