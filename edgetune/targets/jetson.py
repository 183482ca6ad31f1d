"""`jetson`: the INT8 Q/DQ ONNX (and the float ONNX for the FP16 fallback), checked
statically against TensorRT's explicit-quantization rules at build time. The
engine is built on the Jetson itself (`edgetune engine build BUNDLE`), because
engines do not move between GPUs or TensorRT versions; a `trtexec` command line
for the same build is written into the bundle too."""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime import trt as trt_runtime
from edgetune.runtime.files import atomic_path, read_json, sha256_file, write_bytes, write_json, write_text
from edgetune.targets.base import CompileInput, Target

logger = log.get(__name__)
TRTEXEC = "trtexec.sh"

# ONNX operators TensorRT's parser imports (onnx-tensorrt, TensorRT 8.5-10).
TRT_OPS = set("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip Concat
Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf
Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Hardmax Identity If InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN MatMul Max
MaxPool Mean Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round ScaledTanh Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
QUANTIZABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class JetsonTarget(Target):
    runtime = "tensorrt"
    OPTIONS: dict = {}

    def available(self) -> bool:
        return super().available() and trt_runtime.cuda_available()

    def eval_runtime(self) -> str:
        # The build machine has no Jetson: the same ONNX file runs under ONNX Runtime.
        return "onnxruntime"

    def compile(self, inp: CompileInput, dest: Path) -> dict[str, dict]:
        import onnx

        arts = {}
        for precision in self.profile.precisions:
            if precision == "fp32":
                raise EdgetuneError(f"Target profile {self.profile.source}: a Jetson bundle builds int8 or fp16 engines; use fp16 instead of fp32 in 'precision'/'fallback'.")
            src = inp.onnx_for(precision)
            name = f"model.{'int8' if precision == 'int8' else 'fp32'}.onnx"
            if not (dest / name).exists():
                with atomic_path(dest / name) as tmp:
                    shutil.copyfile(src, tmp)
            checks = {}
            if precision == "int8":
                problems, notes = tensorrt_problems(onnx.load(str(src)))
                if problems:
                    raise EdgetuneError(f"The INT8 ONNX {src} breaks TensorRT's explicit-quantization rules, so a Jetson engine would not be INT8:\n  - "
                                        + "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
                checks = {"tensorrt_rules": "passed", "notes": notes}
            arts[precision] = self.artifact(precision, [name], "onnx", dest, input={"name": inp.input_name, "shape": inp.input_shape},
                                            preprocess_built_in=False, options={"tensorrt": dict(self.profile.tensorrt), "batch": self.profile.batch},
                                            engine=f"{trt_runtime.ENGINE_DIR}/model.{precision}.engine", checks=checks)
        return arts

    def extra_files(self, bundle_root: Path, manifest: dict) -> None:
        lines = ["#!/bin/sh", "# Build the TensorRT engines with trtexec on the Jetson (same settings as `edgetune engine build`).",
                 "# Run from the bundle directory. TensorRT's trtexec is in /usr/src/tensorrt/bin on JetPack.", "set -e",
                 f"mkdir -p {trt_runtime.ENGINE_DIR}"]
        for precision, art in manifest["artifacts"].items():
            lines.append(" ".join(shlex.quote(a) for a in trtexec_args(art, precision, self.profile.tensorrt, self.profile.batch)))
        write_text(bundle_root / TRTEXEC, "\n".join(lines) + "\n")
        (bundle_root / TRTEXEC).chmod(0o755)

    def readme(self, manifest: dict) -> str:
        trt = self.profile.tensorrt
        return (f"On the Jetson (JetPack >= {trt.get('min_jetpack', '?')}, TensorRT >= {trt.get('min_tensorrt', '?')}): "
                "`pip install 'edgetune[tensorrt]'` (numpy, OpenCV, cuda-python; TensorRT comes with JetPack), then build the engine there:\n\n"
                f"    edgetune engine build {manifest['name']}\n\n"
                f"or with TensorRT's own tool: `sh {TRTEXEC}`. Engines are tied to the device's GPU and TensorRT version; "
                "an engine built elsewhere is refused.\n")


def trtexec_args(art: dict, precision: str, trt: dict, batch: int) -> list[str]:
    args = ["trtexec", f"--onnx={art['file']}", f"--saveEngine={art['engine']}",
            f"--timingCacheFile={trt_runtime.ENGINE_DIR}/{trt_runtime.TIMING_CACHE}", f"--memPoolSize=workspace:{trt.get('workspace_mb', 1024)}"]
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


# --- static checks -----------------------------------------------------------

def _weight_axis(node, weight_index: int) -> int | None:
    """The output-channel axis of a layer's weight: where per-channel scales must lie."""
    if weight_index != 1:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return -1  # MatMul: the last axis of B


def tensorrt_problems(model) -> tuple[list[str], list[str]]:
    """TensorRT explicit-quantization rules on an ONNX ModelProto: (problems that
    keep the engine from being INT8 or from building, notes worth knowing). The
    same problem on many nodes is one line with a count and examples."""
    from onnx import TensorProto, numpy_helper

    found: dict[str, list[str]] = {}

    def problem(message: str, node=None) -> None:
        found.setdefault(message, []).append(node.name or node.output[0] if node is not None else "")

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problem(f"opset {opset}: per-channel Q/DQ needs opset >= 13")
    consts = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                consts[n.output[0]] = value
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))

    for n in graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in TRT_OPS:
            problem(f"operator {n.domain + '.' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type} is not imported by TensorRT's ONNX parser", n)

    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        users = consumers.get(n.output[0], [])
        if n.op_type == "DequantizeLinear" and users and all(u.op_type in QUANTIZABLE and i == 2 for u, i in users):
            problem("a bias is quantized (int32 Q/DQ); TensorRT takes float biases", n)
            continue
        if len(n.input) < 2 or n.input[1] not in consts:
            problem(f"{n.op_type}: the scale must be a constant", n)
            continue
        scale = numpy_helper.to_array(consts[n.input[1]])
        if (scale <= 0).any():
            problem(f"{n.op_type}: scales must be positive", n)
        if len(n.input) < 3 or not n.input[2]:
            problem(f"{n.op_type}: no zero-point, so ONNX defaults to uint8; TensorRT needs int8 with zero-point 0", n)
        elif n.input[2] not in consts:
            problem(f"{n.op_type}: the zero-point must be a constant", n)
        else:
            zp = consts[n.input[2]]
            if zp.data_type != TensorProto.INT8:
                problem(f"{n.op_type}: zero-point type {TensorProto.DataType.Name(zp.data_type).lower()}; TensorRT needs int8 (symmetric)", n)
            if numpy_helper.to_array(zp).any():
                problem(f"{n.op_type}: zero-point is not 0 (asymmetric); TensorRT needs symmetric quantization", n)
        if scale.size > 1 and n.op_type == "DequantizeLinear":
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            rank = len(numpy_helper.to_array(consts[n.input[0]]).shape) if n.input[0] in consts else None
            want = {_weight_axis(u, i) for u, i in users if u.op_type in QUANTIZABLE}
            want = {rank - 1 if (w == -1 and rank) else w for w in want}
            if not want or None in want:
                problem("per-channel scales on an activation; TensorRT needs per-tensor activation scales", n)
            elif (axis % rank if rank else axis) not in want:
                problem(f"per-channel weight scales on axis {axis}; TensorRT needs the output-channel axis ({sorted(want)[0]})", n)

    unquantized = []
    for n in graph.node:
        if n.op_type not in QUANTIZABLE:
            continue
        fed = [bool(name) and name in producer and producer[name].op_type == "DequantizeLinear" for name in n.input[:2]]
        if all(fed):
            continue
        # Q/DQ before one input only: TensorRT folds the weight's DQ and runs the layer in float (FP16).
        unquantized.append(f"{n.name or n.output[0]}" + (f" (Q/DQ before its {'input' if fed[0] else 'weight'} only)" if any(fed) else ""))
    notes = [f"{len(unquantized)} Conv/Gemm/MatMul layer(s) without Q/DQ before both inputs run in FP16: "
             f"{', '.join(unquantized[:5])}{' ...' if len(unquantized) > 5 else ''}"] if unquantized else []
    problems = [f"{msg}" + (f" ({len(names)}x, e.g. {', '.join(n for n in names[:3] if n)})" if any(names) else "") for msg, names in found.items()]
    return problems, notes


# --- engine build (on the Jetson) --------------------------------------------

def _version_tuple(v) -> tuple[int, ...]:
    return tuple(int(p) for p in str(v).split(".")[:3] if p.isdigit())


def build_engines(bundle, precisions: list[str] | None = None, dla_core: int | None | str = "profile", workspace_mb: int | None = None,
                  force: bool = False) -> dict:
    """Build the bundle's TensorRT engines on this device with TensorRT's Python
    API; writes engine/model.<precision>.engine, the timing cache and engine.json."""
    import tensorrt as trt

    if not trt_runtime.cuda_available():
        raise EdgetuneError("No CUDA GPU is visible here. TensorRT engines are built on the Jetson that runs them: copy the bundle there and run edgetune engine build.")
    profile = bundle.manifest.get("profile", {})
    settings = dict(profile.get("tensorrt") or {})
    if dla_core != "profile":
        settings["dla_core"] = dla_core
    if workspace_mb:
        settings["workspace_mb"] = workspace_mb
    need = settings.get("min_tensorrt")
    if need and _version_tuple(trt.__version__) < _version_tuple(need):
        raise EdgetuneError(f"Target {bundle.target} needs TensorRT >= {need}; this device has {trt.__version__}. "
                            "Update JetPack, or build the bundle for the profile of this device (e.g. --target jetson-xavier-nx).")
    engine_dir = bundle.root / trt_runtime.ENGINE_DIR
    engine_dir.mkdir(exist_ok=True)
    record_path = engine_dir / trt_runtime.RECORD
    here = trt_runtime.device_record()
    record = read_json(record_path) if record_path.is_file() else {}
    if record and any(record.get(k) != here[k] for k in ("tensorrt", "gpu")):
        record = {}  # built for another device or TensorRT: start over
    engines = record.get("engines", {})
    cache_path = engine_dir / trt_runtime.TIMING_CACHE
    for precision in precisions or bundle.precisions:
        art = bundle.artifact(precision)
        engine_path = bundle.root / art["engine"]
        if engine_path.is_file() and precision in engines and not force:
            logger.info("%s exists for this device; skipped (--force rebuilds).", engine_path)
            continue
        started = time.time()
        plan, cache = _build(trt, bundle.root / art["file"], precision, settings, art["input"], profile.get("input", {}).get("batch", 1),
                             cache_path.read_bytes() if cache_path.is_file() else b"")
        write_bytes(engine_path, plan)
        write_bytes(cache_path, cache)
        engines[precision] = {"file": art["engine"], "sha256": sha256_file(engine_path), "size_bytes": engine_path.stat().st_size,
                              "onnx": art["file"], "dla_core": settings.get("dla_core"), "workspace_mb": settings.get("workspace_mb"),
                              "seconds": round(time.time() - started, 1), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        logger.info("Built %s in %.0f s.", engine_path, time.time() - started)
    record = {**here, "engines": engines, "timing_cache": f"{trt_runtime.ENGINE_DIR}/{trt_runtime.TIMING_CACHE}"}
    write_json(record_path, record)
    return record


def _build(trt, onnx_path: Path, precision: str, settings: dict, inp: dict, batch: int, cache_bytes: bytes) -> tuple[bytes, bytes]:
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0 if _version_tuple(trt.__version__) >= (10,) else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgetuneError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.get("workspace_mb", 1024)) << 20)
    for flag in (("INT8", "FP16") if precision == "int8" else ("FP16",)):
        if hasattr(trt.BuilderFlag, flag):
            config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.get("builder_optimization_level") is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(settings["builder_optimization_level"])
    if settings.get("dla_core") is not None:
        if builder.num_DLA_cores <= int(settings["dla_core"]):
            raise EdgetuneError(f"DLA core {settings['dla_core']} was asked for, but this device has {builder.num_DLA_cores} DLA cores. Use --dla-core none.")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if not isinstance(inp["shape"][0], int):  # any batch in the ONNX: build for 1..max(batch, 8)
        shape = [int(d) for d in inp["shape"][1:]]
        opt = builder.create_optimization_profile()
        opt.set_shape(inp["name"], (1, *shape), (batch, *shape), (max(batch, 8), *shape))
        config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgetuneError(f"TensorRT failed to build an engine from {onnx_path}; run with -vv for TensorRT's log.")
    return bytes(plan), bytes(config.get_timing_cache().serialize())
