"""The `evaluate` command: a run on its own split, through its task's report
(metrics JSON in the run directory, a table on screen, figures for people)."""

from __future__ import annotations

from pathlib import Path


def evaluate_run(
    run_dir: Path, part: str, json_file: Path | None, batch_size: int, tta: str = "none", data: str | None = None
) -> dict:
    from edgetune.errors import EdgetuneError
    from edgetune.run import load_run

    run = load_run(run_dir, data)
    task = run.task_impl
    if tta != "none" and not task.supports_tta:
        from edgetune import tasks

        able = " and ".join(name for name, t in tasks.loaded().items() if t.supports_tta)
        raise EdgetuneError(
            f"--tta {tta}: test-time augmentation applies to {able} runs; {run_dir} is a {task.name} run."
        )
    return task.report(run, part, json_file, batch_size, tta)
