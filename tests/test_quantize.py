"""INT8 quantization with NNCF: records, exact restore, QAT against PTQ, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import invoke


def test_qat_run_records_quantization_and_calibration(qat_run, float_run):
    from edgetune.run import load_run

    info = json.loads((qat_run / "run.json").read_text())
    parent = load_run(float_run)
    q, cal = info["quant"], info["calibration"]
    assert info["stage"] == "qat" and info["parent"] == str(float_run.resolve())
    assert q["nncf_config"]["compression_state"] and q["fold_bn"] and q["quantizers"]["per_channel"] > 0
    assert q["activations"] == "auto" and q["overflow_fix"] == "enable"
    # The recipe asks for 300 images; the tiny train split has fewer: all used, shortfall recorded.
    train = parent.split.parts["train"]
    assert cal["requested"] == 300 and cal["count"] == len(train) and cal["short"] == 300 - len(train)
    assert sorted(map(tuple, cal["images"])) == sorted(map(tuple, train)) and len(cal["hash"]) == 64
    assert [h["stage"] for h in info["history"]] == ["finetune", "qat"]


def test_calibration_selection_is_stratified_and_seeded(float_run):
    from edgetune.compress.calibration import Recipe, select
    from edgetune.run import load_run

    split = load_run(float_run).split
    a, rec_a = select(split, Recipe("t", count=10, seed=1))
    b, rec_b = select(split, Recipe("t", count=10, seed=1))
    c, _ = select(split, Recipe("t", count=10, seed=2))
    assert a == b and rec_a["hash"] == rec_b["hash"] and a != c
    assert sorted(y for _, y in a) == [0] * 5 + [1] * 5  # classes in proportion (balanced here)


def test_quantized_run_restores_exactly(qat_run):
    """NNCF config + state dict rebuild the same model: the recorded test metrics
    come back, and two restores give identical outputs."""
    from edgetune.run import load_run

    run = load_run(qat_run)
    a, b = run.build_model(), run.build_model()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    m = run.task_impl.evaluate(a, run.split, run.spec, "test")
    assert m["accuracy"] == run.test_metrics()["accuracy"]


@pytest.mark.slow
def test_qat_beats_or_equals_ptq(float_run, qat_run, tmp_path):
    """The case: a tiny model at 32 px whose INT8 calibration alone (PTQ) loses
    accuracy against float. QAT starts from the same calibration and trains."""
    from edgetune.run import load_run

    ptq = tmp_path / "ptq"
    assert invoke("quantize", float_run, "--mode", "ptq", "--out", ptq) == 0
    f, p, q = (load_run(d).test_metrics()["accuracy"] for d in (float_run, ptq, qat_run))
    assert p < f, f"PTQ did not lose accuracy ({p} vs float {f}): not the case this test is about"
    assert q >= p


def test_int8_activations_are_all_signed(float_run, tmp_path):
    """--activations int8 (TensorRT): no uint8 activation quantizer is left, in the
    model and in its export."""
    from edgetune.export.onnx import export_onnx
    from edgetune.run import load_run

    out = tmp_path / "q"
    assert (
        invoke("quantize", float_run, "--mode", "ptq", "--calib-count", "8", "--activations", "int8", "--out", out) == 0
    )
    assert load_run(out).info["quant"]["made_signed"] > 0
    r = export_onnx(out, tmp_path / "m.onnx", check_images=16)
    assert r["checks"]["activation_qdq"].get("uint8", 0) == 0 and r["checks"]["activation_qdq"]["int8"] > 0


def test_quantize_twice_is_rejected(qat_run, tmp_path, capfd):
    assert invoke("quantize", qat_run, "--out", tmp_path / "q") == 2
    assert "'qat' run and cannot be the input of 'qat'" in capfd.readouterr().err


def test_quantize_rejects_a_missing_run(tmp_path, capfd):
    assert invoke("quantize", tmp_path / "nope", "--out", tmp_path / "q") == 2
    assert "no such run directory" in capfd.readouterr().err


def test_unknown_calibration_recipe(float_run, tmp_path, capfd):
    assert invoke("quantize", float_run, "--calibration", "nosuch", "--out", tmp_path / "q") == 2
    err = capfd.readouterr().err
    assert "--calibration nosuch" in err and "default" in err


def test_bad_calibration_recipe_key(float_run, tmp_path, capfd):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("count: 10\nsplit: test\n")
    assert invoke("quantize", float_run, "--calibration", recipe, "--out", tmp_path / "q") == 2
    assert "split 'test' must be train or val" in capfd.readouterr().err


@pytest.mark.parametrize(
    "pattern, message", [("blocks[", "not a valid regular expression"), ("no_such_layer", "no_such_layer")]
)
def test_bad_ignore_pattern(float_run, tmp_path, capfd, pattern, message):
    assert (
        invoke(
            "quantize", float_run, "--mode", "ptq", "--calib-count", "4", "--ignore", pattern, "--out", tmp_path / "q"
        )
        == 2
    )
    err = capfd.readouterr().err
    assert message in err and "--ignore" in err


def test_ignore_keeps_layer_in_float(float_run, tmp_path):
    from edgetune.run import load_run

    out = tmp_path / "q"
    assert (
        invoke("quantize", float_run, "--mode", "ptq", "--calib-count", "4", "--ignore", "classifier", "--out", out)
        == 0
    )
    hooks = [
        name
        for c in load_run(out).info["quant"]["nncf_config"]["compression_state"]
        for name in c["hook_names_in_model"]
    ]
    assert hooks and not any("classifier" in h for h in hooks)


def test_nan_loss_stops_with_a_clear_error(float_run, tmp_path, capfd):
    code = invoke(
        "quantize",
        float_run,
        "--calib-count",
        "4",
        "--epochs",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "q",
    )
    err = capfd.readouterr().err
    assert code == 2 and "loss became" in err and "--lr" in err
    assert not (tmp_path / "q" / "run.json").exists()
