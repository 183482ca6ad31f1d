"""Device profiles, the plug-in registry, and the static TensorRT checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from conftest import REPO, run_cli
from onnx import TensorProto, helper, numpy_helper

from edgetune.errors import EdgetuneError
from edgetune.export.checks import tensorrt_problems
from edgetune.targets.jetson import trtexec_args
from edgetune.targets.profile import known_profiles, load_profile
from edgetune.targets.registry import get_target

BUILT_IN = ["cpu", "intel", "jetson", "jetson-agx-orin", "jetson-orin-nano", "jetson-xavier-nx"]


def test_built_in_profiles_load_with_their_runtime():
    assert set(BUILT_IN) <= set(known_profiles())
    runtimes = {name: load_profile(name).runtime for name in BUILT_IN}
    assert runtimes["cpu"] == "onnxruntime" and runtimes["intel"] == "openvino"
    assert {runtimes[n] for n in BUILT_IN if n.startswith("jetson")} == {"tensorrt"}
    nano = load_profile("jetson-orin-nano")
    assert nano.precisions == ["int8", "fp16"]
    assert (
        nano.tensorrt["workspace_mb"] == 512 and nano.tensorrt["builder_optimization_level"] == 3
    )  # own value + inherited one
    assert load_profile("jetson-xavier-nx").tensorrt["min_tensorrt"] == "8.5"
    # TensorRT has no uint8 Q/DQ: Jetson profiles (and a user's TensorRT profile without the field) need signed
    # activations.
    assert {load_profile(n).activations for n in BUILT_IN if n.startswith("jetson")} == {"int8"}
    assert load_profile("cpu").activations == load_profile("intel").activations == "auto"
    assert type(get_target(load_profile("intel"))).__name__ == "IntelTarget"


def test_user_profile_file_extends_a_built_in(tmp_path):
    f = tmp_path / "line3.yaml"
    f.write_text("extends: intel\nname: line3-ipc\noptions:\n  device: GPU\n  threads: 4\n")
    p = load_profile(str(f))
    assert (p.name, p.runtime, p.options["device"], p.options["threads"], p.options["performance_hint"]) == (
        "line3-ipc",
        "openvino",
        "GPU",
        4,
        "LATENCY",
    )
    f.write_text(
        "name: my-orin\nruntime: tensorrt\nprecision: int8\n"
    )  # TensorRT without the field: signed activations all the same
    assert load_profile(str(f)).activations == "int8"


@pytest.mark.parametrize(
    "body, field",
    [
        ("name: x\nruntime: onnxruntime\nprecison: int8\n", "precison"),
        ("name: x\nruntime: tflite\nprecision: int8\n", "runtime"),
        ("extends: jetson\nname: x\ntensorrt:\n  workspace_mb: -5\n", "tensorrt.workspace_mb"),
        ("extends: cpu\nname: x\noptions:\n  threads: many\n", "options.threads"),
        ("extends: intel\nname: x\noptions:\n  device: TPU\n", "options.device"),
        ("extends: cpu\nname: x\ninput:\n  batch: 0\n", "input.batch"),
        ("name: x\nprecision: int8\n", "runtime"),
        ("extends: cpu\nname: x\nquantization:\n  activations: uint4\n", "quantization.activations"),
        ("extends: jetson\nname: x\nquantization:\n  activations: auto\n", "quantization.activations"),
    ],
)
def test_a_wrong_profile_names_the_field(tmp_path, body, field):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(EdgetuneError, match=rf"'{field}'"):
        load_profile(str(f))


def test_unknown_target_lists_the_known_ones(tmp_path):
    proc = run_cli("build", "--target", "raspberry", "--out", tmp_path / "b", check=False)
    assert proc.returncode == 2
    assert "unknown target" in proc.stderr and all(n in proc.stderr for n in ("cpu", "intel", "jetson-orin-nano"))
    assert "Traceback" not in proc.stderr


def test_missing_runtime_names_the_extra():
    """OpenVINO hidden from Python: the intel target says which extra to install."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "openvino":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        from edgetune.errors import EdgetuneError
        from edgetune.targets.profile import load_profile
        from edgetune.targets.registry import get_target
        t = get_target(load_profile("intel"))
        assert not t.available()
        try:
            t.require()
        except EdgetuneError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "pip install 'edgetune[openvino]'" in out.stdout, out.stderr


# --- TensorRT explicit-quantization rules on hand-made graphs ---------------------


def _conv_graph(zp_dtype=TensorProto.INT8, zp_value=0, w_axis=0, op_domain="", quantize_input=True) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv(W from DQ, per-channel) -> Relu -> output."""
    w = np.ones((4, 3, 3, 3), np.int8)
    np_zp = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[zp_dtype]
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zp_value, np_zp), "x_zp"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full((4,) if w_axis == 0 else (3,), 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros((4,) if w_axis == 0 else (3,), np.int8), "w_zp"),
    ]
    nodes = []
    conv_in = "x"
    if quantize_input:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_in"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_in"),
        ]
        conv_in = "x_dq"
    nodes += [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis),
        helper.make_node("Conv", [conv_in, "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu", domain=op_domain),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(op_domain, 1)] if op_domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_tensorrt_rules_pass_a_symmetric_per_channel_graph():
    problems, notes = tensorrt_problems(_conv_graph())
    assert problems == [] and notes == []


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"zp_dtype": TensorProto.UINT8, "zp_value": 128}, "zero-point type uint8"),
        ({"zp_value": 3}, "not 0 (asymmetric)"),
        ({"w_axis": 1}, "axis 1; TensorRT needs the output-channel axis (0)"),
        ({"op_domain": "com.microsoft"}, "com.microsoft.Relu is not imported"),
    ],
)
def test_tensorrt_rules_name_each_violation(kwargs, expected):
    problems, _ = tensorrt_problems(_conv_graph(**kwargs))
    assert any(expected in p for p in problems), problems


def test_a_layer_quantized_on_one_input_is_noted_as_fp16():
    problems, notes = tensorrt_problems(_conv_graph(quantize_input=False))
    assert problems == [] and "conv (Q/DQ before its weight only)" in notes[0] and "FP16" in notes[0]


def test_trtexec_command_carries_the_profile_settings():
    art = {
        "file": "model.int8.onnx",
        "engine": "engine/model.int8.engine",
        "input": {"name": "input", "shape": [None, 3, 64, 64]},
    }
    args = trtexec_args(art, "int8", {"workspace_mb": 512, "dla_core": 0, "builder_optimization_level": 3}, batch=2)
    assert {
        "--int8",
        "--fp16",
        "--memPoolSize=workspace:512",
        "--useDLACore=0",
        "--allowGPUFallback",
        "--shapes=input:2x3x64x64",
        "--timingCacheFile=engine/timing.cache",
    } <= set(args)


def test_bf16_is_an_openvino_precision_only(tmp_path):
    """bf16 artifacts are OpenVINO's: another runtime's profile asking for it is refused before training."""
    f = tmp_path / "cpu-bf16.yaml"
    f.write_text("extends: cpu\nname: x\nfallback: [fp32, bf16]\n")
    with pytest.raises(EdgetuneError, match="precision bf16 .* cannot be built for onnxruntime"):
        get_target(load_profile(str(f))).check_profile()
    assert "bf16" in load_profile("intel").precisions
    get_target(load_profile("intel")).check_profile()


def test_the_ir_cut_after_its_preprocessing_is_checked_against_the_model(tmp_path):
    """The intel IR carries preprocessing for OpenVINO applications; edgetune's session
    cuts it off again. Where PrePostProcessor folds a step into the first layer (a
    channel swap after the resize goes into the Conv's weights), the cut model would
    expect BGR input: the build refuses it instead of shipping it."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor, ResizeAlgorithm

    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.targets.intel import PLAIN_INPUT_NODE, check_cut, with_preprocessing

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)  # channels differ: a swap shows
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 14, 14])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    spec = PreprocessSpec(size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic")
    original = ov.convert_model(str(path))
    check_cut(original, with_preprocessing(original.clone(), spec), spec, path)  # the shipped order passes

    model = original.clone()
    consumers = list(model.get_parameters()[0].output(0).get_target_inputs())
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
        ColorFormat.BGR
    ).set_spatial_dynamic_shape()
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().resize(ResizeAlgorithm.RESIZE_CUBIC).convert_element_type(ov.Type.f32).convert_color(
        ColorFormat.RGB
    ).scale(255.0)
    swapped_late = ppp.build()
    consumers[0].get_source_output().get_node().set_friendly_name(PLAIN_INPUT_NODE)
    with pytest.raises(EdgetuneError, match="without its built-in preprocessing computes something else"):
        check_cut(original, swapped_late, spec, path)
