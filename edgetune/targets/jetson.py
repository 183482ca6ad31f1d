"""`jetson`: the INT8 Q/DQ ONNX (and the float ONNX for the FP16 fallback), checked
against TensorRT's explicit-quantization rules (export/checks.py) when the build
compiles for it. The engine is built on the Jetson itself (`edgetune engine
build BUNDLE`, runtime/trt_build.py), because engines do not move between GPUs or
TensorRT versions; a `trtexec` command line for the same build is written into
the bundle too."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from edgetune.runtime import trt as trt_runtime
from edgetune.runtime.files import atomic_path, write_text
from edgetune.targets.base import CompileInput, Target

TRTEXEC = "trtexec.sh"


class JetsonTarget(Target):
    runtime = "tensorrt"
    signed_activations = True  # TensorRT has no uint8 Q/DQ
    qdq_rules = "tensorrt"
    OPTIONS: dict = {}

    def available(self) -> bool:
        return super().available() and trt_runtime.cuda_available()

    def require(self) -> None:
        """Nothing to check on the build machine: the engine is built on the device."""

    def eval_runtime(self) -> str:
        # The build machine has no Jetson: the same ONNX file runs under ONNX Runtime.
        return "onnxruntime"

    def compile(self, inp: CompileInput, dest: Path) -> dict[str, dict]:
        arts = {}
        for precision in self.profile.precisions:
            src = inp.onnx_for(precision)
            name = f"model.{'int8' if precision == 'int8' else 'fp32'}.onnx"
            if not (dest / name).exists():
                with atomic_path(dest / name) as tmp:
                    shutil.copyfile(src, tmp)
            arts[precision] = self.artifact(
                precision,
                [name],
                "onnx",
                dest,
                input={"name": inp.input_name, "shape": inp.input_shape},
                preprocess_built_in=False,
                options={"tensorrt": dict(self.profile.tensorrt), "batch": self.profile.batch},
                engine=f"{trt_runtime.ENGINE_DIR}/model.{precision}.engine",
            )
        return arts

    def extra_files(self, bundle_root: Path, manifest: dict) -> None:
        lines = [
            "#!/bin/sh",
            "# Build the TensorRT engines with trtexec on the Jetson (same settings as `edgetune engine build`).",
            "# Run from the bundle directory. TensorRT's trtexec is in /usr/src/tensorrt/bin on JetPack.",
            "set -e",
            f"mkdir -p {trt_runtime.ENGINE_DIR}",
        ]
        for precision, art in manifest["artifacts"].items():
            lines.append(
                " ".join(
                    shlex.quote(a) for a in trtexec_args(art, precision, self.profile.tensorrt, self.profile.batch)
                )
            )
        write_text(bundle_root / TRTEXEC, "\n".join(lines) + "\n")
        (bundle_root / TRTEXEC).chmod(0o755)

    def readme(self, manifest: dict) -> str:
        trt = self.profile.tensorrt
        return (
            f"On the Jetson (JetPack >= {trt.get('min_jetpack', '?')}, TensorRT >= {trt.get('min_tensorrt', '?')}): "
            "`pip install 'edgetune[tensorrt]'` (numpy, OpenCV, cuda-python; TensorRT comes with JetPack), then "
            f"build the engine there:\n\n    edgetune engine build {manifest['name']}\n\nor with TensorRT's own tool: "
            f"`sh {TRTEXEC}`. Engines are tied to the device's GPU and TensorRT version; an engine built elsewhere is "
            "refused.\n"
        )


def trtexec_args(art: dict, precision: str, trt: dict, batch: int) -> list[str]:
    args = [
        "trtexec",
        f"--onnx={art['file']}",
        f"--saveEngine={art['engine']}",
        f"--timingCacheFile={trt_runtime.ENGINE_DIR}/{trt_runtime.TIMING_CACHE}",
        f"--memPoolSize=workspace:{trt.get('workspace_mb', 1024)}",
    ]
    args += ["--int8", "--fp16"] if precision == "int8" else ["--fp16"]
    if trt.get("dla_core") is not None:
        args += [f"--useDLACore={trt['dla_core']}", "--allowGPUFallback"]
    if trt.get("builder_optimization_level") is not None:
        args.append(f"--builderOptimizationLevel={trt['builder_optimization_level']}")
    shape = art["input"]["shape"]
    if not isinstance(shape[0], int):
        dims = "x".join(str(d) for d in [batch, *shape[1:]])
        args.append(f"--shapes={art['input']['name']}:{dims}")
    return args
