"""Test helpers for camera inference: a tiny ONNX classifier whose answer is known
from the frame (run by the real ONNX Runtime session), and labelled videos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgetune.runtime.preprocess import PreprocessSpec

CLASSES = ["ok", "defect"]
# Identity normalisation: the model sees pixel/255.
SPEC = PreprocessSpec(size=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
GAIN = 20.0


def brightness_model(path: Path) -> Path:
    """ONNX: logits = GAIN * [0.5 - m, m - 0.5], m = mean pixel in [0, 1].
    Frames brighter than mid-grey are 'defect'; softmax(defect) = sigmoid(2*GAIN*(m-0.5))."""
    import onnx
    from onnx import TensorProto, helper

    w = np.array([[-GAIN, GAIN]], dtype=np.float32)
    b = np.array([GAIN * 0.5, -GAIN * 0.5], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
            helper.make_node("ReduceMean", ["gap"], ["m"], axes=[1, 2, 3], keepdims=0),  # mean over C
            helper.make_node("Reshape", ["m", "shape"], ["m2"]),
            helper.make_node("Gemm", ["m2", "w", "b"], ["logits"]),
        ],
        "brightness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
            helper.make_tensor("b", TensorProto.FLOAT, b.shape, b),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def brightness_session(path: Path, threads: int = 1):
    from edgetune.runtime.ort import OrtSession

    return OrtSession(brightness_model(path), SPEC, "fp32", threads)


def defect_score(level: int) -> float:
    """The model's 'defect' probability for a uniform frame of grey `level`."""
    return float(1 / (1 + np.exp(-2 * GAIN * (level / 255 - 0.5))))


def grey(level: int, size=(64, 48)) -> np.ndarray:
    w, h = size
    return np.full((h, w, 3), level, np.uint8)


def write_video(path: Path, frames, fps: float = 25.0, fourcc: str = "FFV1") -> Path:
    """FFV1 in .avi is lossless in OpenCV's FFmpeg: frames come back bit-exact."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path} with {fourcc}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def make_bundle(root: Path, onnx_file: Path, classes, spec: PreprocessSpec) -> Path:
    """A minimal CPU bundle around an ONNX file, for tests of the device side that
    must not wait for a full build: the manifest keys `load_bundle` checks, with sha256."""
    import shutil

    from edgetune.runtime.files import sha256_file, write_json

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_file, root / "model.onnx")
    art = {
        "file": "model.onnx",
        "format": "onnx",
        "precision": "fp32",
        "runtime": "onnxruntime",
        "files": ["model.onnx"],
    }
    write_json(
        root / "manifest.json",
        {
            "format": "edgetune-bundle",
            "schema": 1,
            "name": root.name,
            "target": "cpu",
            "runtime": "onnxruntime",
            "precision": "fp32",
            "classes": list(classes),
            "preprocess": spec.to_dict(),
            "input": {"name": "x", "shape": [None, 3, *spec.size], "layout": "NCHW", "dtype": "float32"},
            "artifacts": {"fp32": art},
            "files": {
                "model.onnx": {"sha256": sha256_file(root / "model.onnx"), "size": (root / "model.onnx").stat().st_size}
            },
        },
    )
    return root


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines()]
