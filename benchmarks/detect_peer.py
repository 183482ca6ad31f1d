"""The peer of benchmarks/detect_neu.py: YOLOv8n's network (ultralytics, random
weights: only its speed is measured) exported to ONNX at our input size in a
virtualenv of its own (benchmarks/work/peer-venv, ultralytics-opencv-headless, so it
cannot replace edgetune's OpenCV; never a dependency of edgetune), quantized to INT8
by NNCF post-training quantization of that ONNX on the images our build calibrated
on, and timed by edgetune's harness on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEER = "yolov8n"
PEER_VENV = ROOT / "benchmarks" / "work" / "peer-venv"  # shared by the real and the smoke runs

PEER_EXPORT = """
import sys, yaml
from ultralytics import YOLO
from ultralytics.nn.tasks import yaml_model_load
cfg = {k: v for k, v in yaml_model_load("yolov8n.yaml").items() if k != "yaml_file"}
cfg.update(nc=int(sys.argv[2]), scale="n")  # our classes; the architecture's n scale
open("yolov8n-peer.yaml", "w").write(yaml.safe_dump(cfg))
model = YOLO("yolov8n-peer.yaml")  # the architecture, random weights: no download
print(model.export(format="onnx", imgsz=int(sys.argv[1]), opset=17, simplify=False, dynamic=False, batch=1))
"""


def peer_onnx(work: Path, size: int, classes: int) -> Path:
    """YOLOv8n's ONNX at `size`, exported in the peer's own virtualenv (made on first use)."""
    venv = PEER_VENV
    py = venv / "bin" / "python"
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                "ultralytics-opencv-headless",
                "torch==2.14.1",
                "torchvision==0.29.1",
                "onnx",
            ],
            check=True,
        )
    out = work / f"peer_{PEER}_{size}.onnx"
    if not out.is_file():
        folder = work / "peer-export"
        folder.mkdir(parents=True, exist_ok=True)
        env = {"YOLO_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(folder)}
        proc = subprocess.run(
            [str(py), "-c", PEER_EXPORT, str(size), str(classes)], cwd=folder, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"The peer's export failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        (folder / f"{PEER}-peer.onnx").replace(out)
    return out


def peer_int8(onnx_path: Path, calib: list[np.ndarray], activations: str) -> Path:
    """NNCF post-training quantization of the peer's ONNX (as our INT8: symmetric, per-channel weights)."""
    import nncf
    import onnx

    from edgetune.export.graph import shift_activations_to_uint8

    out = onnx_path.with_name(onnx_path.stem + f".int8-{activations}.onnx")
    if out.is_file():
        return out
    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    q = nncf.quantize(
        model,
        nncf.Dataset(calib, lambda x: {name: x}),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(calib),
    )
    if activations == "uint8":
        shift_activations_to_uint8(q)
        del q.graph.value_info[:]  # NNCF's recorded int8 types of the shifted tensors: ONNX Runtime infers them anew
    onnx.save(q, str(out))
    return out


def peer_rows(a, run, policy) -> list[dict]:
    """The peer's model call, fp32 and INT8, on ONNX Runtime and OpenVINO."""
    from edgetune.runtime.backends import open_session
    from edgetune.runtime.preprocess import PreprocessSpec, preprocess, read_image
    from edgetune.runtime.timing import time_call

    size = int(run.spec.size[0])
    fp32 = peer_onnx(a.work, size, len(run.classes))
    spec = PreprocessSpec((size, size), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # YOLO's input: RGB / 255
    calib_paths = [p for p, _ in run.info["calibration"]["images"]]
    calib = [preprocess([read_image(p)], spec) for p in calib_paths]
    x = calib[0]
    rows = []
    for runtime in ("onnxruntime", "openvino"):
        files = {"fp32": fp32, "int8": peer_int8(fp32, calib, "uint8" if runtime == "onnxruntime" else "keep")}
        for precision, path in files.items():
            art = {"precision": precision, "input": {"shape": [1, 3, size, size]}}
            session = open_session(runtime, path, spec, art, threads=a.threads)
            stats = time_call(functools.partial(session.run, x), policy).stats()
            rows.append(
                {
                    "artifact": f"{PEER} {precision}",
                    "stage": "peer",
                    "runtime": runtime,
                    "precision": precision,
                    "latency_ms_p50": stats["p50_ms"],
                    "latency_ms_p90": stats["p90_ms"],
                    "latency_ms_p99": stats["p99_ms"],
                    "throughput_fps": 1000.0 / stats["p50_ms"],
                    "size_mb": path.stat().st_size / 1e6,
                    "model": PEER,
                    "file": path.name,
                }
            )
            del session  # one session alive at a time (ONNX Runtime's idle threads spin)
            gc.collect()
    return rows
