"""The tasks edgetune knows, named in this one place.

A task (classification, anomaly detection, ...) is what differs across every
layer: a sample's target, the model and its loss, the graph's outputs, the typed
result a device makes of them, the metrics and the gate. Each task has two halves:

    runtime   a `TaskSession` subclass (torch-free, in `edgetune.runtime.tasks`):
              the model's outputs -> typed results, camera records, overlays, alarms
    build     a `Task` subclass (`edgetune.tasks`): labels, model, training hooks,
              export, metrics, gate, report and the manifest's task section

Built-in tasks are listed in `BUILT_IN`. A plug-in registers one more through the
`edgetune.tasks` entry point group: `NAME = "module:ENTRY"`, ENTRY a `TaskEntry`
(module paths, so that looking a task up imports only the half that is needed).
Code outside the tasks' own modules reads the task from a run or manifest and asks
this registry; it never names a task."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from edgetune.errors import EdgetuneError

GROUP = "edgetune.tasks"


@dataclass(frozen=True)
class TaskEntry:
    runtime: str  # "module:Class" of the task's TaskSession (torch-free)
    build: str  # "module:Class" of the task's Task (the build machine's half)


BUILT_IN = {
    "classification": TaskEntry(
        "edgetune.runtime.tasks.classification:ClassificationSession", "edgetune.tasks.classification:Classification"
    ),
    "anomaly": TaskEntry("edgetune.runtime.tasks.anomaly:AnomalySession", "edgetune.tasks.anomaly:Anomaly"),
    "segment": TaskEntry("edgetune.runtime.tasks.segment:SegmentSession", "edgetune.tasks.segment:Segment"),
    "detect": TaskEntry("edgetune.runtime.tasks.detect:DetectSession", "edgetune.tasks.detect:Detect"),
}
# The task of a run or bundle that names none (made before tasks were recorded).
DEFAULT = "classification"


@functools.cache
def entries() -> dict[str, TaskEntry]:
    """Built-in tasks, then those plug-ins register (a plug-in cannot replace a built-in)."""
    from importlib.metadata import entry_points

    found = dict(BUILT_IN)
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            continue
        try:
            entry = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not stop the built-in tasks
            import logging

            logging.getLogger(__name__).warning("Task plug-in %s (%s) cannot be loaded: %s", ep.name, ep.value, e)
            continue
        if isinstance(entry, TaskEntry):
            found[ep.name] = entry
    return found


def names() -> list[str]:
    return list(entries())


def entry(name: str) -> TaskEntry:
    known = entries()
    if name not in known:
        raise EdgetuneError(
            f"Unknown task {name!r}; this edgetune knows: {', '.join(known)}. A task from a plug-in needs that "
            "plug-in installed here (pip install it beside edgetune)."
        )
    return known[name]


def task_of(record: dict) -> str:
    """The task a run's run.json or a bundle's manifest records."""
    return record.get("task") or DEFAULT


def load(path: str):
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


@functools.cache
def build(name: str):
    """The task's `Task` (the build machine's half: it imports the training stack when used)."""
    return load(entry(name).build)()


def session_class(name: str):
    """The task's `TaskSession` subclass (torch-free)."""
    return load(entry(name).runtime)


def wrap(session, manifest: dict):
    """`session` (any runtime's) as the manifest's task runs it: typed results."""
    return session_class(task_of(manifest))(session, manifest)


def as_task_session(session, classes=()):
    """A task session as it is; a bare one (run, run_frames) read as the default
    task's, with `classes`."""
    from edgetune.runtime.tasks.base import TaskSession

    return session if isinstance(session, TaskSession) else wrap(session, {"task": DEFAULT, "classes": list(classes)})
