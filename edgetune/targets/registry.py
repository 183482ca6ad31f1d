"""Runtime name -> target plug-in. A new runtime is one module with a `Target`
subclass, added here."""

from __future__ import annotations

import importlib

from edgetune.errors import EdgetuneError

PLUGINS = {
    "onnxruntime": "edgetune.targets.cpu:CpuTarget",
    "openvino": "edgetune.targets.intel:IntelTarget",
    "tensorrt": "edgetune.targets.jetson:JetsonTarget",
}


def plugin_for(runtime: str):
    """The plug-in class for a runtime (its module imports no runtime until used)."""
    if runtime not in PLUGINS:
        raise EdgetuneError(f"No target plug-in for runtime {runtime!r}; known: {', '.join(PLUGINS)}.")
    module, attr = PLUGINS[runtime].split(":")
    return getattr(importlib.import_module(module), attr)


def get_target(profile):
    """The plug-in instance that compiles for `profile` (a Profile)."""
    return plugin_for(profile.runtime)(profile)
