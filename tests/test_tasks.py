"""The task seam and the runtime record: one registry names the tasks and nothing
outside the tasks' own modules names one; every table of runtimes derives from the
one record and agrees with the plug-ins, the profiles and pyproject's extras."""

from __future__ import annotations

import ast
import importlib.metadata

import pytest
from conftest import REPO

from edgetune.errors import EdgetuneError


def test_the_registry_names_the_built_in_tasks_and_refuses_an_unknown_one():
    from edgetune import tasks
    from edgetune.runtime.tasks import DEFAULT, names, session_class

    assert {"classification", "anomaly"} <= set(names()) and DEFAULT in names()
    for name in names():
        task, session = tasks.get(name), session_class(name)
        assert task.name == session.task == name and task.session is session and session.outputs
    with pytest.raises(EdgetuneError, match="Unknown task 'counting'.*plug-in"):
        tasks.get("counting")


def _task_literals(path) -> list[tuple[int, str]]:
    from edgetune.runtime.tasks import names

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names():
            found.append((node.lineno, node.value))
    return found


def test_no_module_outside_the_tasks_names_a_task():
    """Shared code reads the task from a run or manifest and asks the registry: a
    task's name as a string literal (a branch on it, a default) is a seam leak."""
    package = REPO / "edgetune"
    own = (package / "tasks", package / "runtime" / "tasks")
    leaks = {
        str(p.relative_to(REPO)): hits
        for p in sorted(package.rglob("*.py"))
        if not any(p.is_relative_to(d) for d in own) and (hits := _task_literals(p))
    }
    assert leaks == {}
    assert _task_literals(package / "tasks" / "classification" / "__init__.py")  # the check sees a task's own name


def test_every_runtime_table_agrees_with_the_runtime_record():
    from edgetune.runtime import backends
    from edgetune.runtime.machine import runtime_versions
    from edgetune.stages.bundle import VERSIONED
    from edgetune.targets import profile
    from edgetune.targets.registry import plugin_for

    extras = importlib.metadata.metadata("edgetune").get_all("Provides-Extra")  # pyproject's, as installed
    assert set(profile.RUNTIMES) == set(backends.RUNTIMES) and set(profile.PRECISIONS) >= {
        p for r in backends.RUNTIMES.values() for p in r.precisions
    }
    for name, record in backends.RUNTIMES.items():
        plugin = plugin_for(name)
        assert plugin.runtime == name and record.extra in extras and record.distribution in VERSIONED
        assert callable(getattr(__import__(record.session, fromlist=["open_session"]), "open_session"))
        assert name in backends.HOST_RUNTIMES or not record.host
    assert backends.RUNTIMES["onnxruntime"].version()  # installed here: its version probe reads it
    import onnxruntime  # noqa: F401 - loaded: the device benchmark's version list names it

    assert "onnxruntime" in runtime_versions()
