"""TensorRT session (the `jetson` targets), torch-free: TensorRT's Python API for
the engine and cuda-python for device buffers.

Engines are built on the device (`edgetune engine build BUNDLE`) and written to
`engine/` with `engine.json`, the record of the TensorRT version and GPU they were
built for. An engine never moves between TensorRT versions or GPUs, so loading
one built elsewhere is refused."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.runtime.backends import ArraySession
from edgetune.runtime.files import read_json, sha256_file
from edgetune.runtime.preprocess import PreprocessSpec

ENGINE_DIR = "engine"
RECORD = "engine.json"
TIMING_CACHE = "timing.cache"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise EdgetuneError(
                "TensorRT sessions need cuda-python for device buffers: pip install 'edgetune[tensorrt]'."
            ) from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def cuda_available() -> bool:
    """TensorRT and a CUDA GPU are both here."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        return _check(_cudart().cudaGetDeviceCount()) > 0
    except Exception:  # noqa: BLE001 - no driver, no device, no cuda-python
        return False


def gpu_name() -> str:
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()


def jetpack_version() -> str | None:
    """JetPack/L4T release of this Jetson, from /etc/nv_tegra_release (None elsewhere)."""
    try:
        line = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
    except OSError:
        return None
    parts = dict(p.strip().split(" ", 1) for p in line.lstrip("# ").split(",") if " " in p.strip())
    return f"L4T {parts.get('R', '?').lstrip('R')}.{parts.get('REVISION:', '?')}" if parts else line


def device_record() -> dict:
    """Versions an engine depends on: TensorRT, CUDA, GPU, JetPack, machine."""
    import tensorrt as trt

    cudart = _cudart()
    cuda = _check(cudart.cudaRuntimeGetVersion())
    return {
        "tensorrt": trt.__version__,
        "cuda": f"{cuda // 1000}.{(cuda % 1000) // 10}",
        "gpu": gpu_name(),
        "jetpack": jetpack_version(),
        "machine": platform.machine(),
    }


def engine_paths(root: Path, precision: str) -> tuple[Path, Path]:
    d = Path(root) / ENGINE_DIR
    return d / f"model.{precision}.engine", d / RECORD


def check_engine(root: Path, precision: str) -> Path:
    """The engine file for `precision`, refused unless it was built here for this
    TensorRT and GPU and is intact."""
    engine, record_path = engine_paths(root, precision)
    hint = f"Build it on this device: edgetune engine build {root}"
    if not engine.is_file() or not record_path.is_file():
        raise EdgetuneError(
            f"{root}: no TensorRT engine for {precision} yet (TensorRT engines are built on the device that runs "
            f"them). {hint}"
        )
    record = read_json(record_path)
    built = record.get("engines", {}).get(precision, {})
    here = device_record()
    for key in ("tensorrt", "gpu"):
        if record.get(key) != here[key]:
            raise EdgetuneError(
                f"{engine} was built for {key} {record.get(key)!r} but this device has {here[key]!r}; engines do not "
                f"move between TensorRT versions or GPUs. {hint} --force"
            )
    if built.get("sha256") != sha256_file(engine):
        raise EdgetuneError(
            f"{engine} does not match its record in {record_path} (modified or truncated). {hint} --force"
        )
    return engine


class TensorRTSession(ArraySession):
    name = "tensorrt"

    def __init__(self, engine_path: Path, spec: PreprocessSpec, precision: str):
        import tensorrt as trt

        super().__init__(spec)
        self.precision = precision
        self.cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EdgetuneError(
                f"{engine_path}: TensorRT could not deserialize the engine. Rebuild it on this device with edgetune "
                "engine build."
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        batch = self.engine.get_tensor_shape(self.input)[0]
        self.fixed_batch = int(batch) if batch > 0 else None
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def _infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output tensor needs a device address, so all are copied back."""
        cudart = self.cudart
        self.context.set_input_shape(self.input, tuple(batch.shape))
        outs = [np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32) for name in self.output_names]
        src = self._buffer(self.input, batch.nbytes)
        dsts = [self._buffer(name, out.nbytes) for name, out in zip(self.output_names, outs)]
        _check(
            cudart.cudaMemcpyAsync(
                src, batch.ctypes.data, batch.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream
            )
        )
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for out, dst in zip(outs, dsts):
            _check(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, dst, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream
                )
            )
        _check(cudart.cudaStreamSynchronize(self.stream))
        return outs

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self.cudart.cudaFree(ptr)


def open_session(
    path: Path, spec: PreprocessSpec, artifact: dict, threads: int | None = None, root: Path | None = None, **_
) -> TensorRTSession:
    precision = artifact.get("precision", "int8")
    return TensorRTSession(check_engine(root or Path(path).parent, precision), spec, precision)
