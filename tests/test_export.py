"""ONNX export: the INT8 Q/DQ file passes every check and runs in ONNX Runtime and
OpenVINO; fp32 export; the static checks catch bad Q/DQ; the four backbone
families go prune -> quantize -> export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import invoke, make_images, ort_optimized, unfused_convs
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def int8_export(qat_run, tmp_path_factory):
    from edgetune.export.onnx import export_onnx

    return export_onnx(qat_run, tmp_path_factory.mktemp("onnx") / "model.int8.onnx", precision="int8")


def test_int8_export_passes_every_check(int8_export, qat_run):
    from edgetune.export.checks import qdq_problems

    r = int8_export
    proto = onnx.load(r["path"])
    assert (
        r["input_name"] == "input"
        and r["output_name"] == "logits"
        and r["layout"] == "NCHW"
        and r["input_shape"] == [-1, 3, 32, 32]
    )
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    c = r["checks"]
    assert (
        c["onnx_checker"] == "passed"
        and c["agreement"] >= 0.99
        and c["images"] > 0
        and np.isfinite(c["max_logit_diff"])
    )
    assert c["weight_qdq"] > 0 and c["weights_folded_to_int8"] == c["weight_qdq"]
    assert qdq_problems(proto) == []
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)


def test_int8_export_runs_in_onnxruntime_and_openvino(int8_export, qat_run):
    import openvino as ov

    from edgetune.export.checks import ort_session
    from edgetune.export.onnx import _check_images
    from edgetune.run import load_run
    from edgetune.tasks.classification.metrics import agreement

    x = _check_images(load_run(qat_run), 12)
    ort_out = ort_session(int8_export["path"]).run(None, {"input": x})[0]
    assert ort_out.shape == (len(x), 2)
    compiled = ov.Core().compile_model(int8_export["path"], "CPU")
    ov_out = compiled(x)[compiled.output(0)]
    assert agreement(ort_out, ov_out) >= 0.9 and np.abs(ort_out - ov_out).max() < 0.5


def test_uint8_activation_export_fuses_every_conv_in_onnxruntime(qat_run, int8_export, tmp_path):
    """The ONNX Runtime flavour: ORT's optimiser leaves no quantized Conv in float.
    ORT fuses a Conv only when its input and output quantizers have one type, and
    only with an output quantizer: the export adds one behind each convolution
    that a SiLU (this model), hard-swish or GELU reads. Without those, the uint8
    shift alone computes exactly what the int8 file does."""
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    from edgetune.export.graph import quantize_layer_outputs, shift_activations_to_uint8
    from edgetune.export.onnx import _check_images, export_onnx
    from edgetune.run import load_run

    r = export_onnx(qat_run, tmp_path / "model.u8.onnx", precision="int8", activations="uint8")
    assert r["activations"] == "uint8" and r["checks"]["activation_qdq"].get("int8", 0) == 0
    assert r["output_quantizers"] > 0 and r["checks"]["decisive_agreement"] >= 0.99
    fused, kept = ort_optimized(Path(r["path"]), tmp_path), ort_optimized(Path(int8_export["path"]), tmp_path)
    n = lambda p: sum(x.op_type == "QLinearConv" for x in p.graph.node)  # noqa: E731
    assert unfused_convs(fused) == [] and unfused_convs(kept) != [] and n(fused) > n(kept) > 0
    # The shift alone: both files compute exactly the same (without graph optimisation).
    x = _check_images(load_run(qat_run), 8)
    shifted = onnx.load(int8_export["path"])
    shift_activations_to_uint8(shifted)
    plain = ort.SessionOptions()
    plain.graph_optimization_level, plain.log_severity_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 3
    a, b = (
        ort.InferenceSession(p, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (int8_export["path"], shifted.SerializeToString())
    )
    np.testing.assert_array_equal(a, b)
    # The pass finds the same convolutions in the int8 file.
    assert quantize_layer_outputs(onnx.load(int8_export["path"]), x) == r["output_quantizers"]


def test_fp32_export_of_a_quantized_run_uses_its_float_parent(qat_run, float_run, tmp_path):
    import torch

    from edgetune.export.checks import ort_session
    from edgetune.export.onnx import export_onnx
    from edgetune.run import load_run

    r = export_onnx(qat_run, tmp_path / "model.fp32.onnx", precision="fp32")
    proto = onnx.load(r["path"])
    assert not {"QuantizeLinear", "DequantizeLinear", "BatchNormalization"} & {n.op_type for n in proto.graph.node}
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = load_run(float_run).build_model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_session(r["path"]).run(None, {"input": x})[0], want, atol=1e-4)
    assert r["checks"]["agreement"] == 1.0


def test_export_cli_writes_json(qat_run, tmp_path):
    import json

    assert invoke("export", qat_run, "--out", tmp_path / "m.onnx", "--json", tmp_path / "m.json", "--no-check") == 0
    assert (
        json.loads((tmp_path / "m.json").read_text())["precision"] == "int8"
        and (tmp_path / "m.onnx").stat().st_size > 0
    )


def test_int8_export_of_a_float_run_is_rejected(float_run, tmp_path, capfd):
    assert invoke("export", float_run, "--precision", "int8", "--out", tmp_path / "m.onnx") == 2
    err = capfd.readouterr().err
    assert "not quantized" in err and "edgetune quantize" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_out_must_be_onnx(float_run, tmp_path, capfd):
    assert invoke("export", float_run, "--precision", "fp32", "--out", tmp_path / "m.txt") == 2
    assert "must end in .onnx" in capfd.readouterr().err


def _weight_qdq_model(w_dtype=np.int8, zp=0, per_channel=True, axis=0, domain=""):
    w = np.ones((4, 3, 1, 1), w_dtype)
    scale = np.full(4 if per_channel else 1, 0.1, np.float32).reshape(-1) if per_channel else np.array(0.1, np.float32)
    zero = np.full(scale.shape, zp, w_dtype)
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=axis),
        helper.make_node("Conv", ["x", "wf"], ["y"]),
        helper.make_node("Relu", ["y"], ["out"], domain=domain),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({}, None),
        ({"w_dtype": np.uint8}, "not int8"),
        ({"zp": 3}, "zero-point"),
        ({"per_channel": False}, "per output channel"),
        ({"axis": 1}, "per output channel"),
        ({"domain": "com.example"}, "custom op"),
    ],
)
def test_qdq_problems_catches_each_bad_form(kwargs, problem):
    from edgetune.export.checks import qdq_problems

    problems = qdq_problems(_weight_qdq_model(**kwargs))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.parametrize("model", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_backbone_families_prune_quantize_export(model, tmp_path_factory, capfd):
    """Each family: float -> prune (the ViT only its MLP hidden channels) -> PTQ
    (QAT's path minus training, tested above) -> INT8 export with checks."""
    from edgetune.export.onnx import export_onnx

    root = tmp_path_factory.mktemp(model)
    data = make_images(root / "images", n_per_class=16, size=32)
    fast = ["--batch-size", "8", "--warmup-epochs", "0"]
    assert (
        invoke(
            "finetune",
            "--data",
            data,
            "--model",
            model,
            "--no-pretrained",
            "--img-size",
            "32",
            "--epochs",
            "4",
            "--lr",
            "3e-3",
            *fast,
            "--out",
            root / "float",
        )
        == 0
    )
    code = invoke(
        "prune",
        root / "float",
        "--ratio",
        "0.3",
        "--round-to",
        "8",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        *fast,
        "--out",
        root / "pruned",
    )
    assert code == 0
    parent = root / "pruned"
    if model == "test_vit":  # only the MLP hidden width shrank: attention and the token width are whole
        from edgetune.compress.shapes import record_shapes
        from edgetune.models.backbone import create_backbone

        before = record_shapes(create_backbone(model, 2, pretrained=False, img_size=32))
        after = json.loads((parent / "run.json").read_text())["arch"]
        changed = {name for name in after if after[name] != before[name]}
        assert changed and all(name.endswith(("mlp.fc1", "mlp.fc2")) for name in changed), changed
    assert invoke("quantize", parent, "--mode", "ptq", "--calib-count", "16", "--out", root / "int8") == 0
    r = export_onnx(root / "int8", root / "model.onnx", precision="int8")
    assert r["checks"]["agreement"] >= 0.99 and r["checks"]["weight_qdq"] > 0


def test_agreement_check_fails_on_decisive_flips_but_not_on_near_ties(float_run, tmp_path):
    import onnx
    import torch

    from edgetune.errors import EdgetuneError
    from edgetune.export.checks import TIE_MARGIN, compare_with_torch, ort_session
    from edgetune.export.onnx import _check_images, export_onnx, run_checks
    from edgetune.run import load_run

    path = tmp_path / "m.onnx"
    export_onnx(float_run, path, precision="fp32")
    images = _check_images(load_run(float_run), 16)
    got = ort_session(path).run(None, {"input": images})[0]
    tied = got.copy()
    tied[0] = [0.0, 0.0]
    tied[0, 1 - got[0].argmax()] = TIE_MARGIN / 2  # PyTorch would pick the other class, but barely
    c = compare_with_torch(path, tied, images)
    assert c["agreement"] == pytest.approx(15 / 16) and c["decisive_agreement"] == 1.0

    def swapped(x):  # a decisive, different model: what a broken export looks like
        return torch.from_numpy(ort_session(path).run(None, {"input": x.numpy()})[0][:, ::-1].copy() * 10)

    with pytest.raises(EdgetuneError, match="decisive"):
        run_checks(path, onnx.load(str(path)), "fp32", swapped, images)
