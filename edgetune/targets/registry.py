"""Runtime name -> target plug-in, as each runtime's record
(`edgetune.runtime.backends.RUNTIMES`) names it."""

from __future__ import annotations

import importlib

from edgetune.errors import EdgetuneError
from edgetune.runtime.backends import RUNTIMES


def plugin_for(runtime: str):
    """The plug-in class for a runtime (its module imports no runtime until used)."""
    if runtime not in RUNTIMES:
        raise EdgetuneError(f"No target plug-in for runtime {runtime!r}; known: {', '.join(RUNTIMES)}.")
    module, attr = RUNTIMES[runtime].target.split(":")
    return getattr(importlib.import_module(module), attr)


def get_target(profile):
    """The plug-in instance that compiles for `profile` (a Profile)."""
    return plugin_for(profile.runtime)(profile)
