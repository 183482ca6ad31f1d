"""The real seed architectures (not timm's `test_*` twins) through `edgetune build`
on cpu, intel and jetson at a small --img-size: ResNet, MobileNet, EfficientNet,
ConvNeXt (pruned too) and ViT. Their larger siblings (resnet50, efficientnet_b0,
convnext_nano, deit_tiny) share the code paths; they get the cheaper PTQ + export
checks. The sizes fixed-size models take, and the refusals, are checked in process."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
import yaml
from conftest import (
    BUILD_TARGETS,
    invoke,
    make_images,
    openvino_float_linears,
    ort_optimized,
    run_cli,
    unfused_convs,
)

from edgetune.errors import EdgetuneError
from edgetune.runtime.bundle import load_bundle

SIZE = 32
FAST = {"batch-size": 16, "lr": 1e-3, "warmup-epochs": 0}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("families") / "images", n_per_class=12, size=SIZE)


def _config(path, data, model: str, **sections) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "data": str(data),
                "model": model,
                "pretrained": False,
                "img-size": SIZE,
                "finetune": {"epochs": 1, **FAST},
                "quantize": {"mode": "ptq", "calib-count": 8},
                "build": {"precision": "int8"},  # the INT8 path is what this checks, whatever it measures at 32 px
                **sections,
            }
        )
    )
    return str(path)


def _int8_export(bundle) -> dict:
    return bundle.manifest["stages"][-2]["metrics"]["int8"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", ["resnet18", "mobilenetv3_large_100", "efficientnet_lite0", "convnext_atto", "vit_tiny_patch16_224"]
)
def test_real_architecture_builds_for_every_target(model, images, tmp_path):
    # ConvNeXt is pruned as well (its layer-scale gammas and LayerNorms follow the channels).
    prune = {"prune": {"ratio": 0.3, "round-to": 8, "epochs": 0}} if model == "convnext_atto" else {}
    out = tmp_path / "out"
    run_cli(
        "--config",
        _config(tmp_path / "build.yaml", images, model, **prune),
        "build",
        *[a for t in BUILD_TARGETS for a in ("--target", t)],
        "--out",
        out,
        timeout=3600,
    )
    bundles = {t: load_bundle(out / f"bundle-{t}.tar.gz") for t in BUILD_TARGETS}
    for target, b in bundles.items():
        assert b.manifest["model"]["backbone"] == model and b.precision == "int8"
        assert b.manifest["input"]["shape"][1:] == [3, SIZE, SIZE] and b.manifest["preprocess"]["size"] == [SIZE, SIZE]
        assert {"README.md", *b.artifact()["files"]} <= set(b.manifest["files"])
        checks = _int8_export(b)["checks"]
        assert checks["decisive_agreement"] >= 0.99 and checks["weight_qdq"] > 0, (target, checks)
    assert set(_int8_export(bundles["cpu"])["checks"]["activation_qdq"]) == {"uint8"}
    # ONNX Runtime runs every quantized convolution as an integer kernel, also those ending in
    # hard-swish (MobileNetV3), GELU or LayerNorm (ConvNeXt), and those before a ReLU6 (EfficientNet-Lite)
    # whose quantizer the jetson target made signed.
    left = unfused_convs(ort_optimized(bundles["cpu"].artifact_path("int8"), tmp_path))
    assert left == [], left
    # OpenVINO runs every quantized linear layer in int8, a ViT's attention projection and fc2 too.
    assert openvino_float_linears(bundles["intel"].artifact_path("int8")) == []
    assert set(_int8_export(bundles["jetson"])["checks"]["activation_qdq"]) == {"int8"}
    assert bundles["jetson"].artifact()["checks"]["tensorrt_rules"] == "passed"
    if prune:
        assert bundles["cpu"].manifest["model"]["pruned"] is True
        macs = json.loads((out / "prune" / "prune.json").read_text())
        assert macs["after"]["macs"] < 0.8 * macs["before"]["macs"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50", "efficientnet_b0", "convnext_nano", "deit_tiny_patch16_224"])
def test_larger_sibling_quantizes_and_exports(model, images, tmp_path):
    """PTQ + both INT8 exports with all their checks (agreement with PyTorch, Q/DQ
    rules, the uint8 form) and TensorRT's rules on the signed one."""
    from edgetune.export.checks import tensorrt_problems
    from edgetune.export.onnx import export_onnx

    fast = [a for k, v in FAST.items() for a in (f"--{k}", v)]
    assert (
        invoke(
            "finetune",
            "--data",
            images,
            "--model",
            model,
            "--no-pretrained",
            "--img-size",
            SIZE,
            "--epochs",
            0,
            *fast,
            "--out",
            tmp_path / "float",
        )
        == 0
    )
    assert (
        invoke(
            "quantize",
            tmp_path / "float",
            "--mode",
            "ptq",
            "--calib-count",
            8,
            "--activations",
            "int8",
            "--out",
            tmp_path / "int8",
        )
        == 0
    )
    for activations in ("keep", "uint8"):
        r = export_onnx(
            tmp_path / "int8",
            tmp_path / f"{activations}.onnx",
            precision="int8",
            activations=activations,
            check_images=24,
        )
        assert r["checks"]["decisive_agreement"] >= 0.99 and r["checks"]["weight_qdq"] > 0
    problems, _ = tensorrt_problems(onnx.load(str(tmp_path / "keep.onnx")))
    assert problems == []


def test_img_size_reaches_a_vit_and_pretrained_position_embeddings_follow(tmp_path):
    from edgetune.models.backbone import create_backbone, resolve_preprocess

    at224 = create_backbone("vit_tiny_patch16_224", 2, pretrained=False)
    torch.save(at224.state_dict(), tmp_path / "w.pt")
    at64 = create_backbone("vit_tiny_patch16_224", 2, weights=tmp_path / "w.pt", img_size=64).eval()
    assert at64.pos_embed.shape[1] == 1 + 4 * 4 and resolve_preprocess(at64, 64).size == (64, 64)
    assert torch.equal(at64.pos_embed[:, 0], at224.pos_embed[:, 0])  # the class token's embedding is kept
    assert at64(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
    assert create_backbone("resnet18", 2, pretrained=False, img_size=64) is not None  # any-size models take no img_size


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "vit_tiny_patch16_224", "--img-size", "60"], ["--img-size 60", "patch size is 16", "48 or 64"]),
        (["--model", "efficientformer_l1", "--img-size", "64"], ["efficientformer_l1", "224x224"]),
        (["--model", "qwen3_vit_88m_enc"], ["no classifier head", "qwen3_vit_88m_enc"]),
    ],
)
def test_sizes_and_heads_a_model_cannot_take_are_refused(args, needles, images, tmp_path, capfd):
    code = invoke("finetune", "--data", images, "--no-pretrained", "--epochs", "1", *args, "--out", tmp_path / "run")
    err = capfd.readouterr().err
    assert code == 2 and all(n in err for n in needles), err
    assert "Traceback" not in err and not (tmp_path / "run" / "run.json").exists()


def test_attention_without_plain_mlps_is_refused_before_pruning():
    from torch import nn

    from edgetune.compress.prune import check_prunable

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads, self.qkv = 2, nn.Linear(8, 24)

    with pytest.raises(EdgetuneError, match="attn.*multi-head attention"):
        check_prunable(nn.ModuleDict({"attn": Attention()}), "toy")


def test_a_vit_mac_target_beyond_its_mlps_is_refused():
    from edgetune.compress.prune import mac_reduction, ratio_for_macs
    from edgetune.models.backbone import create_backbone

    model = create_backbone("test_vit", 2, pretrained=False, img_size=32)
    assert 0 < mac_reduction(model, (32, 32), 0.5, 8, "l1") < 0.5  # only the MLP hidden channels go
    with pytest.raises(EdgetuneError, match="--target-macs 0.95: pruning VisionTransformer removes at most"):
        ratio_for_macs(model, (32, 32), 0.95, 8, "l1")


def test_uint8_form_puts_a_relu_output_at_zero_point_0_and_the_rest_at_128():
    """Signed activations (a model quantized for TensorRT too): after ReLU uint8 with
    zero-point 0, so ONNX Runtime drops the ReLU and fuses; elsewhere 128. Same outputs."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgetune.export.checks import activation_problems
    from edgetune.export.onnx import shift_activations_to_uint8

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(rng.integers(-60, 60, (4, 3, 1, 1)).astype(np.int8), "w"),
        numpy_helper.from_array(np.full(4, 0.02, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
        helper.make_node("Conv", ["xd", "wf"], ["y"]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(0, 2, (1, 3, 4, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert shift_activations_to_uint8(model) == 4 and activation_problems(model, "uint8") == []
    zps = {
        n.output[0]: numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == n.input[2]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert zps["xq"].dtype == zps["rq"].dtype == np.uint8 and int(zps["xq"]) == 128 and int(zps["rq"]) == 0
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("scale", [0.05, 0.04])
def test_uint8_form_lets_onnxruntime_drop_a_relu6_after_a_signed_quantizer(scale, tmp_path):
    """A ReLU6 (Clip 0..6) before a signed quantizer, as a model quantized for TensorRT
    too has: its uint8 form gets the scale that spans what the int8 quantizer let
    through (up to 6, or its own top 127 x scale if lower), so ONNX Runtime drops the
    Clip and runs the Conv in integers; the outputs keep their clamp and move by less
    than one int8 step."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgetune.export.onnx import shift_activations_to_uint8

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(scale, np.float32), "s6"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(rng.integers(-100, 100, (8, 3, 1, 1)).astype(np.int8), "w"),
        numpy_helper.from_array(np.full(8, 0.05, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
        helper.make_node("Conv", ["xd", "wf"], ["y"]),
        helper.make_node("Clip", ["y", "lo", "hi"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s6", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s6", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(0, 3, (1, 3, 8, 8)).astype(np.float32)

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    before = run(model)
    assert "QLinearConv" not in {n.op_type for n in ort_optimized_proto(model, tmp_path / "before.onnx").graph.node}
    shift_activations_to_uint8(model)
    after = run(model)
    ops = [n.op_type for n in ort_optimized_proto(model, tmp_path / "after.onnx").graph.node]
    assert "Clip" not in ops and "QLinearConv" in ops and not {"Conv", "FusedConv"} & set(ops)
    top = min(127 * scale, 6.0)
    assert before.max() == pytest.approx(top, abs=1e-5) and after.max() <= top + 1e-5
    assert after.min() >= 0 and np.abs(after - before).max() <= scale


def ort_optimized_proto(model, path):
    path.write_bytes(model.SerializeToString())
    return ort_optimized(path, path.parent)


def test_layer_scale_folds_into_the_layer_before_it_and_a_quantized_run_rebuilds_it():
    """ConvNeXt's gamma and a ViT's LayerScale multiply fold into fc2 / proj (the
    same outputs; no float Mul left between the layer and its quantizer), and a
    quantized model restored from its record folds the same way."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from edgetune.compress.fold import fold_layer_scale
    from edgetune.compress.quantize import quantize_model, rebuild_quantized

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, init_values=0.5)
    for model in (timm.create_model("test_convnext", num_classes=2).eval(), vit.eval()):
        for p in model.parameters():  # layer-scale starts near 0: make it matter
            if p.ndim == 1:
                torch.nn.init.uniform_(p, 0.5, 1.5)
        x = torch.randn(2, 3, 32, 32)
        before = model(x)
        assert fold_layer_scale(model) > 0 and fold_layer_scale(model) == 0, type(model).__name__
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    fresh = timm.create_model("test_convnext", num_classes=2)
    qmodel, record = quantize_model(fresh, [torch.randn(1, 3, 32, 32) for _ in range(4)], (32, 32))
    assert record["folded_layer_scales"] == fold_layer_scale(timm.create_model("test_convnext", num_classes=2))
    restored = rebuild_quantized(timm.create_model("test_convnext", num_classes=2), record, (32, 32))
    restored.load_state_dict(qmodel.state_dict())
    torch.testing.assert_close(restored.eval()(x), qmodel.eval()(x))
