"""`edgetune build` end to end on the tiny model: three targets from one trained
model, the stage cache, resuming a killed build, and `engine build`'s guard."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from conftest import EDGETUNE, make_images, run_cli, tiny_build_config
from edgetune.runtime import backends
from edgetune.runtime.bundle import load_bundle


def _stage_times(out):
    return {p.stem: json.loads(p.read_text())["finished"] for p in (out / "stages").glob("*.json") if not p.stem.endswith(".pending")}


@pytest.fixture(scope="module")
def jetson_too(built_bundles):
    """The same build with jetson added: only its compile stage runs."""
    proc = run_cli("--config", built_bundles / "build.yaml", "build", "--target", "cpu", "--target", "intel", "--target", "jetson", "--out", built_bundles)
    assert proc.stderr.count("skipped") >= 4  # finetune, quantize, export, compile-cpu, compile-intel
    return built_bundles


@pytest.mark.slow
def test_one_build_makes_three_bundles(jetson_too):
    out = jetson_too
    for target, runtime, files in [("cpu", "onnxruntime", {"model.int8.onnx", "model.fp32.onnx"}),
                                   ("intel", "openvino", {"model.int8.xml", "model.int8.bin", "model.fp32.xml", "model.fp32.bin"}),
                                   ("jetson", "tensorrt", {"model.int8.onnx", "model.fp32.onnx", "trtexec.sh"})]:
        b = load_bundle(out / f"bundle-{target}.tar.gz")
        assert (b.target, b.runtime, b.precision) == (target, runtime, "int8")
        assert files | {"README.md"} == set(b.manifest["files"])
        assert 0.0 <= b.metrics["test"]["accuracy"] <= 1.0 and b.metrics["latency_ms_p50"] > 0
        assert b.manifest["model"]["backbone"] == "test_efficientnet"
        assert "pip install 'edgetune[" in (b.root / "README.md").read_text()
    # One trained model for all three: the same source run and the same export.
    sources = {load_bundle(out / f"bundle-{t}").manifest["source_run"] for t in ("cpu", "intel", "jetson")}
    assert len(sources) == 1
    jetson = load_bundle(out / "bundle-jetson")
    assert jetson.artifact()["checks"]["tensorrt_rules"] == "passed"
    assert jetson.metrics["evaluated_with"] == "onnxruntime"  # no TensorRT here: the same ONNX through ONNX Runtime
    assert "--int8" in (jetson.root / "trtexec.sh").read_text()
    assert set(_stage_times(out)) >= {"finetune", "quantize", "export", "compile-cpu", "compile-intel", "compile-jetson"}


@pytest.mark.skipif(backends.available("tensorrt"), reason="TensorRT is installed: the engine test below runs instead")
def test_engine_build_without_tensorrt_names_the_extra(jetson_too, built_bundles):
    proc = run_cli("engine", "build", jetson_too / "bundle-jetson", check=False)
    assert proc.returncode == 2 and "edgetune[tensorrt]" in proc.stderr
    proc = run_cli("engine", "build", built_bundles / "bundle-cpu", check=False)
    assert proc.returncode == 2 and "Jetson bundle" in proc.stderr


@pytest.mark.skipif(not backends.available("tensorrt"), reason="needs TensorRT and a GPU")
def test_engine_build_on_a_gpu(jetson_too, built_bundles, tmp_path):
    from edgetune.runtime.trt import cuda_available

    if not cuda_available():
        pytest.skip("no CUDA GPU")
    bundle = shutil.copytree(built_bundles / "bundle-jetson", tmp_path / "bundle-jetson")
    run_cli("engine", "build", bundle, "--precision", "int8")
    s = load_bundle(bundle).open()
    assert s.name == "tensorrt" and s.run(__import__("numpy").zeros((1, 3, 32, 32), "float32")).shape == (1, 2)


@pytest.mark.slow
def test_stage_cache_skips_unchanged_and_reruns_changed(built_bundles, image_folder, tmp_path):
    out = shutil.copytree(built_bundles, tmp_path / "out")
    cfg = tiny_build_config(tmp_path / "build.yaml", image_folder)
    before = _stage_times(out)
    proc = run_cli("--config", cfg, "build", "--target", "cpu", "--out", out)
    assert _stage_times(out) == before  # nothing reran
    assert proc.stderr.count("skipped") >= 4
    assert f"bundle {out / 'bundle-cpu'}" in proc.stdout and "accuracy" in proc.stdout and "latency_ms" in proc.stdout

    cfg = tiny_build_config(tmp_path / "changed.yaml", image_folder, quantize_epochs=0)  # only QAT's section changes
    run_cli("--config", cfg, "build", "--target", "cpu", "--out", out)
    after = _stage_times(out)
    assert after["finetune"] == before["finetune"]
    assert all(after[s] != before[s] for s in ("quantize", "export", "compile-cpu"))
    assert after["compile-intel"] == before["compile-intel"]  # not asked for this time: left alone
    assert "compile-jetson" not in after or after["compile-jetson"] == before["compile-jetson"]
    assert load_bundle(out / "bundle-cpu").manifest["stages"][1]["config"]["epochs"] == 0


@pytest.mark.slow
def test_killed_build_resumes(tmp_path):
    data = make_images(tmp_path / "images", n_per_class=16, size=32)
    cfg = tiny_build_config(tmp_path / "build.yaml", data, finetune_epochs=4, quantize_epochs=0)
    out = tmp_path / "out"
    args = [*EDGETUNE, "--config", str(cfg), "build", "--target", "cpu", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "finetune" / "ckpt" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the build never finished its first epoch"
    assert not (out / "stages" / "finetune.json").exists()

    done = run_cli("--config", cfg, "build", "--target", "cpu", "--out", out)
    assert "finetune: resuming" in done.stderr.replace("\n", " ")
    assert load_bundle(out / "bundle-cpu").precision == "int8"
