"""`intel`: OpenVINO IR (.xml/.bin) with the preprocessing built in by OpenVINO's
PrePostProcessor: the device feeds uint8 BGR frames (N, H, W, 3) of any size and
gets logits. Class names and the preprocessing spec sit in the IR's runtime info,
so the IR alone is enough for an OpenVINO application. edgetune's own session
preprocesses with OpenCV instead (faster on a CPU: see edgetune.runtime.ov)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime.files import atomic_path
from edgetune.runtime.ov import PLAIN_INPUT_NODE, has_bf16, require_bf16
from edgetune.runtime.preprocess import PreprocessSpec
from edgetune.runtime.tasks import DEFAULT, session_class
from edgetune.targets.base import CompileInput, Target, int_at_least

logger = log.get(__name__)
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


class IntelTarget(Target):
    runtime = "openvino"
    OPTIONS = {
        "device": (
            lambda v: (
                isinstance(v, str) and v.split(":")[0].split(".")[0] in ("CPU", "GPU", "NPU", "AUTO", "MULTI", "HETERO")
            ),
            "an OpenVINO device: CPU, GPU, GPU.1, NPU or AUTO",
        ),
        "performance_hint": (lambda v: v in HINTS, f"one of {', '.join(HINTS)}"),
        "threads": (int_at_least(0), "an integer >= 0 (0: OpenVINO's default)"),
    }

    def compile(self, inp: CompileInput, dest: Path) -> dict[str, dict]:
        self.require()
        arts = {}
        for precision in self.bf16_checked(self.profile.precisions):
            # bf16 is the fp32 IR compiled with a bf16 inference precision: the files are shared.
            xml = f"model.{'fp32' if precision == 'bf16' else precision}.xml"
            if not (dest / xml).exists():
                write_ir(
                    inp.onnx_for(precision),
                    dest / xml,
                    inp.spec,
                    inp.classes,
                    compress_to_fp16=precision == "fp16",
                    task=inp.task,
                )
            options = {
                k: self.profile.options[k]
                for k in ("device", "performance_hint", "threads")
                if k in self.profile.options
            }
            arts[precision] = self.artifact(
                precision,
                [xml, xml[:-4] + ".bin"],
                "openvino-ir",
                dest,
                input={"name": inp.input_name, "shape": inp.input_shape},
                preprocess_built_in=True,
                frames_input={"dtype": "uint8", "layout": "NHWC", "color": "BGR", "size": "any"},
                options=options,
            )
        return arts

    def check_profile(self) -> None:
        super().check_profile()
        if self.profile.precision == "bf16":
            self.bf16_checked([self.profile.precision])  # refused before any training where this machine cannot run it

    def bf16_checked(self, precisions: list[str]) -> list[str]:
        """`precisions` less a bf16 fallback that this machine cannot evaluate (its
        device has no bf16); a bf16 main precision is refused, naming the profile."""
        if "bf16" not in precisions:
            return precisions
        import openvino as ov

        device = self.profile.options.get("device", "CPU")
        core = ov.Core()
        if has_bf16(core, device):
            return precisions
        if self.profile.precision == "bf16":
            require_bf16(core, device, f"Target profile {self.profile.source} (precision bf16)")
        logger.warning(
            "Target profile %s: no bf16 artifact, since OpenVINO's %s here does not compute in bf16 "
            "(needs AVX512_BF16 or AMX); the bundle has %s.",
            self.profile.source,
            device,
            ", ".join(p for p in precisions if p != "bf16"),
        )
        return [p for p in precisions if p != "bf16"]

    def readme(self, manifest: dict) -> str:
        return (
            "Install on the device: `pip install 'edgetune[openvino]'` (numpy, OpenCV and OpenVINO; no torch).\nThe "
            "IR has the preprocessing built in: an OpenVINO application feeds uint8 BGR frames shaped (N, H, W, 3), "
            "any H and W, and gets logits. Class names are in the IR's runtime info (`model_info/labels`, "
            "`edgetune/classes`).\n"
        )


def write_ir(
    onnx_path: Path,
    xml: Path,
    spec: PreprocessSpec,
    classes: list[str],
    compress_to_fp16: bool = False,
    task: str = DEFAULT,
) -> None:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    original = model.clone()
    model = with_preprocessing(model, spec)
    check_cut(original, model, spec, xml)
    model.set_rt_info(json.dumps(classes), ["edgetune", "classes"])
    model.set_rt_info(json.dumps(spec.to_dict()), ["edgetune", "preprocess"])
    model.set_rt_info(
        " ".join(c.replace(" ", "_") for c in classes), ["model_info", "labels"]
    )  # OpenVINO Model API convention
    model.set_rt_info(task, ["edgetune", "task"])
    model_type = session_class(task).openvino_type  # a Model API type only where the outputs are that type's
    if model_type:
        model.set_rt_info(model_type, ["model_info", "model_type"])
    # The .xml/.bin pair is saved under temporary names, then each lands atomically.
    with atomic_path(xml) as tmp_xml, atomic_path(xml.with_suffix(".bin")) as tmp_bin:
        saved = tmp_xml.with_suffix(".ir.xml")
        ov.save_model(model, str(saved), compress_to_fp16=compress_to_fp16)
        saved.replace(tmp_xml)
        saved.with_suffix(".bin").replace(tmp_bin)


def check_cut(original, model, spec: PreprocessSpec, where: Path) -> None:
    """edgetune's session runs the IR cut after its built-in preprocessing, which
    must compute what the model did before it was added: PrePostProcessor folds
    steps it can into the first layer (a channel swap into its weights), and a cut
    model holding one would expect other input."""
    import openvino as ov

    from edgetune.runtime.ov import compile_config, plain_model

    core = ov.Core()
    x = np.random.default_rng(0).standard_normal((1, 3, *spec.size)).astype(np.float32)
    want = list(core.compile_model(original, "CPU", compile_config(1))(x).values())
    got = list(
        core.compile_model(plain_model(model.clone(), [None, 3, *spec.size]), "CPU", compile_config(1))(x).values()
    )
    for a, b in zip(want, got):
        if not np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max()))):
            raise EdgetuneError(
                f"{where}: the IR without its built-in preprocessing computes something else than the exported model "
                f"(largest difference {float(np.abs(a - b).max()):.4g}): OpenVINO moved a preprocessing step into the "
                "model. Please report this with the OpenVINO version."
            )


def with_preprocessing(model, spec: PreprocessSpec):
    """uint8 BGR NHWC frames of any size -> the float NCHW input `spec` describes."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor, ResizeAlgorithm

    param = model.get_parameters()[0]
    consumers = list(param.output(0).get_target_inputs())
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor()
    tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
        ColorFormat.BGR
    ).set_spatial_dynamic_shape()
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    resize = {
        "bilinear": ResizeAlgorithm.RESIZE_LINEAR,
        "bicubic": ResizeAlgorithm.RESIZE_CUBIC,
        "nearest": ResizeAlgorithm.RESIZE_NEAREST,
    }
    # As the runtime's OpenCV path: resize in uint8 (or, for older runs, in float),
    # then normalise. The channel swap comes first: after the resize PrePostProcessor
    # folds it into the first layer's weights, and the model cut at PLAIN_INPUT_NODE
    # (what edgetune runs) would expect BGR.
    steps = ppp.input().preprocess()
    if spec.channel_order == "RGB":
        steps.convert_color(ColorFormat.RGB)
    if spec.resize_dtype == "uint8":
        steps.resize(resize[spec.interpolation]).convert_element_type(ov.Type.f32).scale(255.0)
    else:
        steps.convert_element_type(ov.Type.f32).scale(255.0).resize(resize[spec.interpolation])
    steps.mean(list(spec.mean)).scale(list(spec.std))
    model = ppp.build()
    consumers[0].get_source_output().get_node().set_friendly_name(PLAIN_INPUT_NODE)
    return model
