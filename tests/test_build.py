"""`edgetune build` end to end on the tiny model: three targets from one trained
model (signed activations for TensorRT, an export variant per runtime), the stage
cache, resuming a killed build, the accuracy gate, and `engine build`'s guard."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import BUILD_TARGETS, EDGETUNE, make_images, run_cli, tiny_build_config

from edgetune.errors import EdgetuneError
from edgetune.run import load_run
from edgetune.runtime import backends
from edgetune.runtime.bundle import load_bundle


def _stage_times(out):
    return {
        p.stem: json.loads(p.read_text())["finished"]
        for p in (out / "stages").glob("*.json")
        if not p.stem.endswith(".pending")
    }


@pytest.mark.slow
def test_one_build_makes_three_bundles(built_bundles):
    import openvino as ov

    from edgetune.runtime.ov import has_bf16

    out = built_bundles
    for target, runtime, files in [
        ("cpu", "onnxruntime", {"model.int8.onnx", "model.fp32.onnx"}),
        ("intel", "openvino", {"model.int8.xml", "model.int8.bin", "model.fp32.xml", "model.fp32.bin"}),
        ("jetson", "tensorrt", {"model.int8.onnx", "model.fp32.onnx", "trtexec.sh"}),
    ]:
        b = load_bundle(out / f"bundle-{target}.tar.gz")
        assert (b.target, b.runtime, b.precision) == (target, runtime, "int8")
        assert files | {"README.md"} == set(b.manifest["files"])
        assert (
            b.metrics["test"]["accuracy"] >= 0.8 and b.metrics["latency_ms_p50"] > 0
        )  # well above chance (0.5) after QAT
        assert b.manifest["model"]["backbone"] == "test_efficientnet"
        assert "pip install 'edgetune[" in (b.root / "README.md").read_text()
    # One trained model for all three: the same source run, quantized with signed
    # activations because jetson (TensorRT) is among the targets.
    bundles = {t: load_bundle(out / f"bundle-{t}") for t in ("cpu", "intel", "jetson")}
    assert len({b.manifest["source_run"] for b in bundles.values()}) == 1
    assert load_run(bundles["cpu"].source_run).info["quant"]["activations"] == "int8"
    # Export variants: ONNX Runtime gets uint8 activations (fused integer kernels),
    # OpenVINO and TensorRT share one signed Q/DQ file, exported once.
    exported = {t: b.manifest["stages"][-2]["metrics"]["int8"] for t, b in bundles.items()}
    assert exported["cpu"]["activations"] == "uint8" and set(exported["cpu"]["checks"]["activation_qdq"]) == {"uint8"}
    assert exported["intel"]["activations"] == exported["jetson"]["activations"] == "keep"
    assert set(exported["jetson"]["checks"]["activation_qdq"]) == {"int8"}
    assert exported["intel"]["sha256"] == exported["jetson"]["sha256"] != exported["cpu"]["sha256"]
    # OpenVINO: every artifact's float layers ran in the precision it is named for (read back
    # from the compiled model); bf16 shares the fp32 IR and is there only where this CPU has bf16.
    intel = bundles["intel"]
    ran = {p: a["metrics"]["inference_precision"] for p, a in intel.manifest["artifacts"].items()}
    assert ran["int8"] == ran["fp32"] == "fp32" and intel.metrics["inference_precision"] == "fp32"
    assert ran.get("bf16", "bf16") == "bf16" and ("bf16" in ran) == has_bf16(ov.Core())
    assert bundles["cpu"].metrics["inference_precision"] == "fp32"
    jetson = bundles["jetson"]
    assert jetson.artifact()["checks"]["tensorrt_rules"] == "passed"
    assert jetson.metrics["evaluated_with"] == "onnxruntime"  # no TensorRT here: the same ONNX through ONNX Runtime
    assert "--int8" in (jetson.root / "trtexec.sh").read_text()
    assert set(_stage_times(out)) == {
        "finetune",
        "quantize",
        "export-fp32",
        "export-int8",
        "export-int8-uint8",
        "compile-cpu",
        "compile-intel",
        "compile-jetson",
    }


def test_signed_activations_follow_the_targets():
    from edgetune.build.plan import quantize_overrides
    from edgetune.targets.profile import load_profile

    cpu, jetson = load_profile("cpu"), load_profile("jetson-orin-nano")
    assert quantize_overrides([cpu], {}) == {}
    assert quantize_overrides([cpu, jetson], {"quantize": {"activations": "int8"}}) == {"activations": "int8"}
    assert quantize_overrides([cpu, jetson], {}) == {"activations": "int8"}


def test_target_latency_is_timed_on_the_first_targets_runtime():
    from edgetune.build.plan import prune_overrides
    from edgetune.targets.profile import load_profile

    intel, cpu = load_profile("intel"), load_profile("cpu")
    assert prune_overrides([intel, cpu], {"prune": {"target-latency": 0.3}}) == {
        "round_to": max(intel.channel_multiple, cpu.channel_multiple),
        "latency_runtime": "openvino",
        "latency_precision": "int8",
    }
    assert prune_overrides([cpu], {"prune": {"target-latency": 0.3, "latency-runtime": "openvino", "round-to": 4}}) == {
        "latency_precision": "int8"
    }
    assert "latency_runtime" not in prune_overrides([cpu], {"prune": {"ratio": 0.3}})
    with pytest.raises(
        EdgetuneError, match="prune.latency-runtime"
    ):  # a Jetson's TensorRT cannot be timed on this machine
        prune_overrides([load_profile("jetson-orin-nano")], {"prune": {"target-latency": 0.3}})


def test_unsigned_activations_for_a_jetson_target_is_refused_before_training(image_folder, tmp_path):
    cfg = tiny_build_config(tmp_path / "build.yaml", image_folder)
    cfg.write_text(cfg.read_text().replace("quantize:\n", "quantize:\n  activations: auto\n"))
    proc = run_cli(
        "--config", cfg, "build", "--target", "cpu", "--target", "jetson", "--out", tmp_path / "out", check=False
    )
    assert proc.returncode == 2 and "'quantize.activations'" in proc.stderr and "jetson" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "finetune").exists()


@pytest.mark.skipif(backends.available("tensorrt"), reason="TensorRT is installed: the engine test below runs instead")
def test_engine_build_without_tensorrt_names_the_extra(built_bundles):
    proc = run_cli("engine", "build", built_bundles / "bundle-jetson", check=False)
    assert proc.returncode == 2 and "edgetune[tensorrt]" in proc.stderr
    proc = run_cli("engine", "build", built_bundles / "bundle-cpu", check=False)
    assert proc.returncode == 2 and "Jetson bundle" in proc.stderr


@pytest.mark.skipif(not backends.available("tensorrt"), reason="needs TensorRT and a GPU")
def test_engine_build_on_a_gpu(built_bundles, tmp_path):
    from edgetune.runtime.trt import cuda_available

    if not cuda_available():
        pytest.skip("no CUDA GPU")
    bundle = shutil.copytree(built_bundles / "bundle-jetson", tmp_path / "bundle-jetson")
    run_cli("engine", "build", bundle, "--precision", "int8")
    s = load_bundle(bundle).open()
    assert s.name == "tensorrt" and s.run(__import__("numpy").zeros((1, 3, 32, 32), "float32")).shape == (1, 2)


def _targets(*names):
    return [a for t in names for a in ("--target", t)]


@pytest.mark.slow
def test_stage_cache_skips_unchanged_and_reruns_changed(built_bundles, image_folder, tmp_path):
    out = shutil.copytree(built_bundles, tmp_path / "out")
    cfg = tiny_build_config(tmp_path / "build.yaml", image_folder)
    before = _stage_times(out)
    proc = run_cli("--config", cfg, "build", *_targets(*BUILD_TARGETS), "--out", out)
    assert _stage_times(out) == before  # nothing reran
    assert proc.stderr.count("skipped") == len(before)
    assert f"bundle {out / 'bundle-cpu'}" in proc.stdout and "accuracy" in proc.stdout and "latency_ms" in proc.stdout

    cfg = tiny_build_config(tmp_path / "changed.yaml", image_folder, quantize_epochs=0)  # only QAT's section changes
    run_cli("--config", cfg, "build", "--target", "cpu", "--out", out)
    after = _stage_times(out)
    assert after["finetune"] == before["finetune"]
    assert all(after[s] != before[s] for s in ("quantize", "export-int8-uint8", "compile-cpu"))
    assert all(
        after[s] == before[s] for s in ("compile-intel", "compile-jetson", "export-int8")
    )  # not asked for this time: left alone
    stages = load_bundle(out / "bundle-cpu").manifest["stages"]
    # Without a TensorRT target the quantize section's own activations (auto) apply.
    assert stages[1]["config"]["epochs"] == 0 and stages[1]["config"]["activations"] == "auto"


@pytest.mark.slow
def test_build_gate_fails_the_build_after_writing_the_bundles(built_bundles, image_folder, tmp_path):
    """build.max-drop runs `compare`'s gate on every bundle against the float model."""
    out = shutil.copytree(built_bundles, tmp_path / "out")
    before = _stage_times(out)
    lenient = tiny_build_config(
        tmp_path / "lenient.yaml", image_folder, build={"max-drop": 100.0, "min-agreement": 0.0}
    )
    proc = run_cli("--config", lenient, "build", *_targets(*BUILD_TARGETS), "--out", out)
    assert _stage_times(out) == before  # the gate is no stage: nothing reran
    gates = {t: json.loads((out / f"gate-{t}.json").read_text()) for t in BUILD_TARGETS}
    assert all(g["passed"] for g in gates.values()) and "PASS accuracy_drop" in proc.stderr
    cpu = load_bundle(out / "bundle-cpu")
    assert gates["cpu"]["candidate"]["accuracy"] == pytest.approx(
        cpu.metrics["test"]["accuracy"]
    )  # the compiled artifact's
    assert gates["cpu"]["reference"]["accuracy"] == pytest.approx(load_run(out / "finetune").test_metrics()["accuracy"])

    # A QAT epoch at a learning rate 100x too high scrambles the tiny model (how
    # far is up to chance, so the gate also asks for full agreement, which a
    # scrambled model cannot keep). The bundle is still written, then the gate fails.
    strict = tiny_build_config(
        tmp_path / "strict.yaml",
        image_folder,
        build={"max-drop": 5.0, "min-agreement": 1.0},
        quantize={"epochs": 1, "batch-size": 8, "lr": 0.1, "warmup-epochs": 0},
    )
    proc = run_cli("--config", strict, "build", "--target", "cpu", "--out", out, check=False)
    gate = json.loads((out / "gate-cpu.json").read_text())
    assert proc.returncode == 1, proc.stderr
    assert "accuracy gate" in proc.stderr and "cpu: " in proc.stderr and "Traceback" not in proc.stderr
    assert not gate["passed"] and gate["agreement"] < 1.0
    assert gate["candidate"]["accuracy"] == pytest.approx(
        load_bundle(out / "bundle-cpu").metrics["test"]["accuracy"]
    )  # the new bundle
    assert _stage_times(out)["compile-cpu"] != before["compile-cpu"]
    assert ET.parse(out / "gate-cpu.xml").getroot().get("failures") in ("1", "2")  # the agreement, maybe the drop too


@pytest.mark.slow
def test_killed_build_resumes(tmp_path):
    data = make_images(tmp_path / "images", n_per_class=16, size=32)
    # Enough epochs that the kill lands inside the stage even on a fast CPU.
    cfg = tiny_build_config(tmp_path / "build.yaml", data, finetune_epochs=30, quantize_epochs=0)
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


def test_build_from_a_quantized_run_compiles_it_without_training(qat_run, float_run, tmp_path, capsys, monkeypatch):
    from conftest import invoke

    from edgetune.stages import main_precision

    monkeypatch.setattr(main_precision, "SLOWER", 0.05)
    out = tmp_path / "out"
    assert invoke("build", "--target", "cpu", "--from", qat_run, "--out", out) == 0
    b = load_bundle(out / "bundle-cpu")
    assert b.source_run == qat_run.resolve()
    assert set(_stage_times(out)) == {"export-fp32", "export-int8-uint8", "compile-cpu"}  # no training stage ran
    assert not (out / "finetune").exists() and not (out / "quantize").exists()
    assert abs(b.metrics["test"]["accuracy"] - load_run(qat_run).test_metrics()["accuracy"]) <= 0.05
    # On a model this small ONNX Runtime's INT8 and fp32 are within noise of each other (quantizing and
    # dequantizing the tiny tensors costs about what integer kernels save). With the margin set so that
    # INT8 counts as slower unless it is 20x faster, the timed build must ship fp32 and say so.
    choice = b.manifest["precision_choice"]
    assert choice["int8_slower"] and choice["speed"]["runtime"] == "onnxruntime" and b.precision == "fp32"
    assert b.metrics["evaluated_with"] == "onnxruntime" and b.artifact("int8")  # INT8 stays in the bundle
    assert "INT8 ran" in capsys.readouterr().err
    assert (
        invoke("build", "--target", "cpu", "--from", qat_run, "--precision", "int8", "--out", tmp_path / "forced") == 0
    )
    forced = load_bundle(tmp_path / "forced" / "bundle-cpu")
    assert forced.precision == "int8" and forced.manifest["precision_choice"]["forced"] == "int8"
    assert "main precision" in run_cli("inspect", tmp_path / "forced" / "bundle-cpu").stdout
    before = _stage_times(out)
    assert invoke("build", "--target", "cpu", "--from", qat_run, "--out", out) == 0
    assert _stage_times(out) == before  # same run, same weights: everything cached
    capsys.readouterr()

    # A run trained for ONNX Runtime's uint8 activations cannot feed TensorRT.
    assert invoke("build", "--target", "jetson", "--from", qat_run, "--out", tmp_path / "j") == 2
    assert "--activations int8" in capsys.readouterr().err
    # --from replaces fine-tuning, so fine-tuning's overrides are refused.
    assert invoke("build", "--target", "cpu", "--from", float_run, "--data", "elpv", "--out", tmp_path / "d") == 2
    assert "--data" in capsys.readouterr().err
    assert invoke("build", "--target", "cpu", "--from", tmp_path, "--out", tmp_path / "n") == 2
    assert "not an edgetune run" in capsys.readouterr().err


def test_a_new_edgetune_version_redoes_the_conversions_not_the_training(monkeypatch):
    """After an upgrade a build re-exports and recompiles (the code made those files)
    but keeps its fine-tuned and quantized weights."""
    from edgetune.stages import base
    from edgetune.stages.common import TrainingStage

    conversion = base.Stage()
    conversion.name = "export-int8"
    training = TrainingStage("finetune", None, base.StageOptions({}, {"epochs": 3}), source_key="data")
    before = conversion.key(["upstream"]), training.key([])
    monkeypatch.setattr(base, "__version__", "99.0.0")
    assert conversion.key(["upstream"]) != before[0]
    assert training.key([]) == before[1]
