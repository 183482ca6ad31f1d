"""Building TensorRT engines on the Jetson itself (`edgetune engine build`):
engines do not move between GPUs or TensorRT versions. Torch-free: TensorRT's
Python API, with a timing cache and a record of what was built for which device
kept in the bundle."""

from __future__ import annotations

import time
from pathlib import Path

from edgetune import log
from edgetune.errors import EdgetuneError
from edgetune.runtime import trt as trt_runtime
from edgetune.runtime.files import read_json, sha256_file, write_bytes, write_json

logger = log.get(__name__)


def _version_tuple(v) -> tuple[int, ...]:
    return tuple(int(p) for p in str(v).split(".")[:3] if p.isdigit())


def build_engines(
    bundle,
    precisions: list[str] | None = None,
    dla_core: int | None | str = "profile",
    workspace_mb: int | None = None,
    force: bool = False,
) -> dict:
    """Build the bundle's TensorRT engines on this device with TensorRT's Python
    API; writes engine/model.<precision>.engine, the timing cache and engine.json."""
    import tensorrt as trt

    if not trt_runtime.cuda_available():
        raise EdgetuneError(
            "No CUDA GPU is visible here. TensorRT engines are built on the Jetson that runs them: copy the bundle "
            "there and run edgetune engine build."
        )
    profile = bundle.manifest.get("profile", {})
    settings = dict(profile.get("tensorrt") or {})
    if dla_core != "profile":
        settings["dla_core"] = dla_core
    if workspace_mb:
        settings["workspace_mb"] = workspace_mb
    need = settings.get("min_tensorrt")
    if need and _version_tuple(trt.__version__) < _version_tuple(need):
        raise EdgetuneError(
            f"Target {bundle.target} needs TensorRT >= {need}; this device has {trt.__version__}. "
            "Update JetPack, or build the bundle for the profile of this device (e.g. --target jetson-xavier-nx)."
        )
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
        plan, cache = _build(
            trt,
            bundle.root / art["file"],
            precision,
            settings,
            art["input"],
            profile.get("input", {}).get("batch", 1),
            cache_path.read_bytes() if cache_path.is_file() else b"",
        )
        write_bytes(engine_path, plan)
        write_bytes(cache_path, cache)
        engines[precision] = {
            "file": art["engine"],
            "sha256": sha256_file(engine_path),
            "size_bytes": engine_path.stat().st_size,
            "onnx": art["file"],
            "dla_core": settings.get("dla_core"),
            "workspace_mb": settings.get("workspace_mb"),
            "seconds": round(time.time() - started, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        logger.info("Built %s in %.0f s.", engine_path, time.time() - started)
    record = {**here, "engines": engines, "timing_cache": f"{trt_runtime.ENGINE_DIR}/{trt_runtime.TIMING_CACHE}"}
    write_json(record_path, record)
    return record


def _build(
    trt, onnx_path: Path, precision: str, settings: dict, inp: dict, batch: int, cache_bytes: bytes
) -> tuple[bytes, bytes]:
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = (
        0 if _version_tuple(trt.__version__) >= (10,) else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgetuneError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.get("workspace_mb", 1024)) << 20)
    for flag in ("INT8", "FP16") if precision == "int8" else ("FP16",):
        if hasattr(trt.BuilderFlag, flag):
            config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.get("builder_optimization_level") is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(settings["builder_optimization_level"])
    if settings.get("dla_core") is not None:
        if builder.num_DLA_cores <= int(settings["dla_core"]):
            raise EdgetuneError(
                f"DLA core {settings['dla_core']} was asked for, but this device has {builder.num_DLA_cores} DLA "
                "cores. Use --dla-core none."
            )
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
