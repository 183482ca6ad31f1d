"""Shared fixtures: small generated image sets, a trained tiny run, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgetune.data.synthetic import make_images  # noqa: F401 - the tests' image sets

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a network
REPO = Path(__file__).resolve().parents[1]
EDGETUNE = [sys.executable, "-m", "edgetune.cli.main"]


def run_cli(
    *args, check: bool = True, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*EDGETUNE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"edgetune {' '.join(map(str, args))} exited "
            f"{proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        )
    return proc


TINY = [
    "--model",
    "test_efficientnet",
    "--no-pretrained",
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--warmup-epochs",
    "0",
]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="session")
def float_run(tmp_path_factory, image_folder) -> Path:
    """A fine-tuned tiny float run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "float"
    run_cli("finetune", "--data", image_folder, *TINY, "--epochs", "8", "--out", out)
    return out


def make_fp32_bundle(run_dir: Path, out: Path, channel_order: str | None = None) -> Path:
    """A minimal fp32 ONNX Runtime bundle of a run, written directly (no build
    pipeline): fast input for the bench, compare and verify tests. `channel_order`
    overrides the manifest's preprocessing (to plant a mismatch)."""
    import torch

    from edgetune.run import load_run
    from edgetune.runtime.files import sha256_file, write_json

    run = load_run(run_dir)
    out.mkdir(parents=True)
    h, w = run.spec.size
    torch.onnx.export(
        run.build_model(),
        (torch.zeros(1, 3, h, w),),
        str(out / "model.fp32.onnx"),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    spec = run.spec.to_dict()
    if channel_order:
        spec["channel_order"] = channel_order
    size = (out / "model.fp32.onnx").stat().st_size
    manifest = {
        "format": "edgetune-bundle",
        "schema": 1,
        "name": out.name,
        "target": "cpu",
        "runtime": "onnxruntime",
        "precision": "fp32",
        "model": {"backbone": run.model_name, "stage": run.stage, "pruned": False, "macs": 1000, "params": 100},
        "classes": run.classes,
        "input": {"name": "input", "shape": [None, 3, h, w], "layout": "NCHW", "dtype": "float32"},
        "preprocess": spec,
        "artifacts": {
            "fp32": {
                "file": "model.fp32.onnx",
                "files": ["model.fp32.onnx"],
                "format": "onnx",
                "precision": "fp32",
                "runtime": "onnxruntime",
                "size_bytes": size,
                "options": {},
            }
        },
        "source_run": str(run.dir),
        "files": {"model.fp32.onnx": {"sha256": sha256_file(out / "model.fp32.onnx"), "size": size}},
    }
    write_json(out / "manifest.json", manifest)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, float_run) -> Path:
    return make_fp32_bundle(float_run, tmp_path_factory.mktemp("bundles") / "fp32")


# --- built bundles (edgetune build, the whole pipeline) ---------------------------


def tiny_build_config(path: Path, data: Path, finetune_epochs: int = 8, quantize_epochs: int = 3, **sections) -> Path:
    """A build config for the tiny test model: every stage short. QAT at lr 1e-3
    (ten times the quantize default, which suits pretrained backbones) keeps this
    untrained-from-scratch model well above chance, so the parity checks mean something.
    INT8 stays the main artifact (build.precision): on a model this small ONNX Runtime's
    INT8 runs slower than its fp32, and the build would ship fp32.
    `sections` adds or replaces top-level keys (e.g. build={"max-drop": 1.0}; the build
    section is merged with that default)."""
    import yaml

    sections["build"] = {"precision": "int8", **sections.get("build", {})}

    path.write_text(
        yaml.safe_dump(
            {
                "data": str(data),
                "model": "test_efficientnet",
                "pretrained": False,
                "img-size": 32,
                "finetune": {"epochs": finetune_epochs, "batch-size": 8, "lr": 3e-3, "warmup-epochs": 0},
                "quantize": {"epochs": quantize_epochs, "batch-size": 8, "lr": 1e-3, "warmup-epochs": 0},
                **sections,
            }
        )
    )
    return path


BUILD_TARGETS = ("cpu", "intel", "jetson")


@pytest.fixture(scope="session")
def built_bundles(tmp_path_factory, image_folder) -> Path:
    """One tiny build for cpu, intel and jetson from one QAT model:
    OUT/bundle-TARGET(/.tar.gz), OUT/build.yaml."""
    root = tmp_path_factory.mktemp("build")
    out = root / "out"
    out.mkdir()
    cfg = tiny_build_config(out / "build.yaml", image_folder)
    run_cli("--config", cfg, "build", *[a for t in BUILD_TARGETS for a in ("--target", t)], "--out", out)
    return out


@pytest.fixture(scope="session")
def cpu_bundle(built_bundles) -> Path:
    """A built INT8 ONNX Runtime bundle directory (its .tar.gz sits beside it)."""
    return built_bundles / "bundle-cpu"


@pytest.fixture(scope="session")
def intel_bundle(built_bundles) -> Path:
    """A built INT8 OpenVINO bundle directory (IR with built-in preprocessing)."""
    return built_bundles / "bundle-intel"


def invoke(*args) -> int:
    """`edgetune ARGS` in this process (no interpreter start-up, torch already
    imported): its exit status; output goes to capsys/capfd."""
    from edgetune.cli.main import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


# bench timing kept short: the tests check what bench reports, not how fast
QUICK_BENCH = ["--batch", "1", "--warmup", "1", "--min-time", "0.1", "--min-runs", "5"]
QAT_ARGS = ["--mode", "qat", "--epochs", "3", "--lr", "1e-3", "--batch-size", "8", "--warmup-epochs", "0"]


@pytest.fixture(scope="session")
def qat_run(tmp_path_factory, float_run) -> Path:
    """`float_run` quantized to INT8 with QAT (NNCF, 3 epochs): a 'qat' run
    whose run.json holds the NNCF config ("quant") and the calibration record."""
    out = tmp_path_factory.mktemp("runs") / "qat"
    run_cli("quantize", float_run, *QAT_ARGS, "--out", out)
    return out


@pytest.fixture(scope="session")
def textures(tmp_path_factory):
    """Generated good and bad textures (anomaly_helpers) and each defect's mask."""
    from anomaly_helpers import make_textures

    root = tmp_path_factory.mktemp("anomaly") / "textures"
    return root, make_textures(root)


@pytest.fixture(scope="session")
def anomaly_build(tmp_path_factory, textures) -> Path:
    """One anomaly build for every target, from fit to gate (the gate runs by default)."""
    from anomaly_helpers import SIZE

    data, _ = textures
    out = tmp_path_factory.mktemp("anomaly-build")
    cfg = out / "config.yaml"
    cfg.write_text(
        f"task: anomaly\nnormal: good\ndata: {data}\nmodel: test_resnet\npretrained: false\nimg-size: {SIZE}\n"
        "val-frac: 0.2\ntest-frac: 0.3\nbuild:\n  precision: int8\n"
    )
    run_cli(
        "--config",
        cfg,
        "build",
        "--target",
        "cpu",
        "--target",
        "intel",
        "--target",
        "jetson",
        "--out",
        out,
        timeout=900,
    )
    return out


def ort_optimized(path, tmp_path):
    """The graph ONNX Runtime's CPU provider runs for `path`, as it optimised it."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath, so.log_severity_level = str(tmp_path / f"{path.stem}.opt.onnx"), 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath)


def openvino_float_linears(xml) -> list[str]:
    """The FullyConnected layers OpenVINO's CPU plugin runs in f32 for the IR `xml` (at f32 precision)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))  # frames of any size (and batch): one 32x32 frame here
    shape = [
        d.get_length() if d.is_static else (1 if i == 0 else 32)
        for i, d in enumerate(model.inputs[0].get_partial_shape())
    ]
    model.reshape(shape)
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer({0: np.zeros(shape, compiled.inputs[0].get_element_type().to_dtype())})
    return [
        p.node_name
        for p in request.profiling_info
        if p.node_type.startswith("FullyConnected") and p.exec_type.lower().endswith("f32")
    ]


def unfused_convs(proto) -> list[str]:
    """Quantized convolutions ONNX Runtime left in float: a Conv whose weight comes
    from a DequantizeLinear, or whose output goes straight into a QuantizeLinear."""
    quantized = {i for n in proto.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type in ("Conv", "FusedConv") and (n.output[0] in quantized or n.input[1] in dequantized)
    ]
