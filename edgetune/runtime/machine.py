"""What a benchmark ran on, read from the machine itself (best effort: a file that
is not readable on this device leaves its field empty). Torch-free, stdlib only."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 2)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 2)
    except (ValueError, OSError, AttributeError):
        return None


def _os_name() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return f"{platform.system()} {platform.release()}"


def _cpu_clocks_mhz() -> list[float]:
    clocks = []
    for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        v = _read(str(f))
        if v and v.isdigit():
            clocks.append(round(int(v) / 1000, 1))
    return clocks


def _temperatures_c() -> dict[str, float]:
    temps = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        kind, value = _read(str(zone / "type")), _read(str(zone / "temp"))
        if kind and value and value.lstrip("-").isdigit():
            temps[f"{kind}:{zone.name[len('thermal_zone') :]}"] = int(value) / 1000
    return temps


def _jetson() -> dict | None:
    release = _read("/etc/nv_tegra_release")
    model = (_read("/proc/device-tree/model") or "").rstrip("\x00")
    if not release and "jetson" not in model.lower():
        return None
    info = {"model": model or None, "l4t": release.splitlines()[0] if release else None}
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
        info["nvpmodel"] = " ".join(out.stdout.split()) or None
    except (OSError, subprocess.SubprocessError):
        info["nvpmodel"] = None  # not installed or not permitted: leave it unknown
    gpu = {}
    for f in Path("/sys/class/devfreq").glob("*/cur_freq"):
        v = _read(str(f))
        if v and v.isdigit():
            gpu[f.parent.name] = round(int(v) / 1e6, 1)
    info["devfreq_mhz"] = gpu
    return info


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes this process loaded (never imports one)."""
    from edgetune.runtime.backends import RUNTIMES

    out = {}
    for name in (*(r.module for r in RUNTIMES.values()), "numpy", "cv2", "torch"):
        mod = sys.modules.get(name)
        if mod is not None:
            v = getattr(mod, "__version__", None)
            if v is None and hasattr(mod, "get_version"):
                v = mod.get_version()
            out[name] = str(v)
    return out


def device_info() -> dict:
    """What this benchmark ran on. Everything best effort: a file that is not
    readable on this device just leaves its field empty."""
    clocks = _cpu_clocks_mhz()
    info = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "memory_gb": _memory_gb(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_mhz": {"min": min(clocks), "max": max(clocks)} if clocks else None,
        "temperature_c": _temperatures_c() or None,
        "jetson": _jetson(),
    }
    info["machine"] = describe(info)
    return info


def describe(info: dict) -> str:
    """A short machine label for a results row."""
    if info.get("jetson") and info["jetson"].get("model"):
        return f"{info['jetson']['model']} ({info['cores']} cores)"
    return f"{info['cpu']} ({info['cores']} cores)"
