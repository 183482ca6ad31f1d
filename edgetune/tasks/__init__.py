"""The build machine's half of each task (labels, model, training hooks, export,
metrics, gate, report, the manifest's task section): `get(name)` gives it, from the
one registry in `edgetune.runtime.tasks`. The interface is `edgetune.tasks.base.Task`.

Modules here import torch and the training stack only inside their functions, so
the command line can read a task's options without loading them."""

from __future__ import annotations

from edgetune.runtime.tasks import DEFAULT, names, task_of  # noqa: F401 - the registry, for the build side
from edgetune.runtime.tasks import build as get  # noqa: F401 - the `Task` registered under a name


def of(record) -> object:
    """The task of a run (`Run`), a run.json or a manifest (dict)."""
    return get(task_of(record if isinstance(record, dict) else record.info))


def loaded() -> dict:
    """Every registered task whose build half imports here, by name. A task that
    fails to import (a broken plug-in) is left out with a warning, so that the
    command line and the other tasks keep working."""
    import logging

    found = {}
    for name in names():
        try:
            found[name] = get(name)
        except Exception as e:  # noqa: BLE001 - whatever a broken plug-in raises
            logging.getLogger(__name__).warning(
                "Task %s cannot be loaded (%s: %s); it is left out.", name, type(e).__name__, e
            )
    return found
