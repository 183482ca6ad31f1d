"""The CI accuracy gate: a candidate (typically the INT8 bundle) against a
reference (typically the float model) on the same labelled images.

The task of the reference decides the gate (`Task.gate`): the drop of its metric
(accuracy, image AUROC, ...) in points, with a paired bootstrap 95% interval of the
difference (both models resampled on the same images), and for tasks with one, the
share of images both decide alike. Each check is one JUnit test case; the reports
add the task's table (F1, per-class deltas, ...)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

from edgetune.tasks.gate import GateResult


def junit_xml(result: GateResult, suite: str = "edgetune.compare") -> str:
    """JUnit XML: one test case per gate, a <failure> for each failed one."""
    failures = sum(not c.passed for c in result.checks)
    root = ET.Element("testsuites", name=suite, tests=str(len(result.checks)), failures=str(failures))
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(result.checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    props = ET.SubElement(ts, "properties")
    for k, v in (
        ("reference", result.names["reference"]),
        ("candidate", result.names["candidate"]),
        (f"reference_{result.metric}", f"{result.reference[result.metric]:.6f}"),
        (f"candidate_{result.metric}", f"{result.candidate[result.metric]:.6f}"),
        (f"{result.metric}_diff_ci95_points", f"{result.ci_points[0]:.4f},{result.ci_points[1]:.4f}"),
    ):
        ET.SubElement(props, "property", name=k, value=str(v))
    for c in result.checks:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=c.name, time="0")
        if not c.passed:
            ET.SubElement(tc, "failure", message=c.message, type="GateFailure").text = c.message
        else:
            ET.SubElement(tc, "system-out").text = c.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown(result: GateResult) -> str:
    """A summary for $GITHUB_STEP_SUMMARY (or a pull-request comment)."""
    r = result.reference
    status = "PASSED" if result.passed else "FAILED"
    lines = [
        f"### edgetune accuracy gate: {status}",
        "",
        f"Reference `{result.names['reference']}`, candidate `{result.names['candidate']}`, {r['n']} images.",
        "",
        "| gate | result | value | limit |",
        "|---|---|---|---|",
    ]
    for ch in result.checks:
        value = f"{ch.value:.2f} points" if ch.name.endswith("_drop") else f"{ch.value:.2%}"
        limit = f"<= {ch.limit:g} points" if ch.name.endswith("_drop") else f">= {ch.limit:.2%}"
        lines.append(f"| {ch.name.replace('_', ' ')} | {'pass' if ch.passed else '**FAIL**'} | {value} | {limit} |")
    lines += ["", "| | reference | candidate | difference |", "|---|---|---|---|"]
    lines += [f"| {what} | {a} | {b} | {d} |" for what, a, b, d in result.rows]
    return "\n".join(lines) + "\n"


def print_result(result: GateResult) -> None:
    from rich.table import Table

    from edgetune import log

    t = Table(
        title=f"{result.names['reference']} (reference) vs {result.names['candidate']} (candidate), "
        f"{result.reference['n']} images"
    )
    for col in ("", "reference", "candidate", "difference"):
        t.add_column(col, justify="left" if not col else "right")
    for row in result.rows:
        t.add_row(*row)
    log.print_table(t)
    for ch in result.checks:
        mark = "[green]PASS[/green]" if ch.passed else "[red bold]FAIL[/red bold]"
        log.console.print(f"{mark} {ch.name}: {ch.message}")


def write_reports(result: GateResult, junit: Path | None, md: Path | None, json_file: Path | None) -> None:
    from edgetune.runtime.files import write_json, write_text

    if junit:
        write_text(junit, junit_xml(result))
    if md:
        write_text(md, markdown(result))
    if json_file:
        write_json(json_file, result.to_dict())


def run_compare(
    reference: Path,
    candidate: Path,
    data: str | None,
    max_drop: float | None,
    min_agreement: float,
    threads: int | None,
    junit: Path | None,
    md: Path | None,
    json_file: Path | None,
    skip_bad: bool = False,
    runtime: str | None = None,
    precision: str | None = None,
) -> GateResult:
    """The `compare` command: both artifacts on the same images, then the gate of
    the reference's task. `runtime`: run a CANDIDATE bundle through this runtime
    instead of its own; `precision`: which of its artifacts (default: its main one)."""
    from edgetune.bench.artifacts import labelled_images, open_artifact, predict
    from edgetune.errors import EdgetuneError

    ref = open_artifact(reference, "REFERENCE")
    cand = open_artifact(candidate, "CANDIDATE", runtime, precision)
    if cand.task.name != ref.task.name or list(cand.classes) != list(ref.classes):
        raise EdgetuneError(
            f"CANDIDATE {candidate} is a {cand.task.name} model of classes {cand.classes}, REFERENCE {reference} a "
            f"{ref.task.name} model of classes {ref.classes}: they are not comparable."
        )
    images = labelled_images(data, ref, skip_bad) or labelled_images(None, cand)
    if images is None:
        raise EdgetuneError(
            f"No labelled images to compare on: give --data (its images and labels); {reference} has no run with a "
            "test split on this machine."
        )
    images = images.for_artifact(ref, f"REFERENCE {reference}")
    task = ref.task
    names = {"reference": ref.label, "candidate": cand.label}
    limit = max_drop if max_drop is not None else task.default_max_drop
    reference_results, candidate_results = predict(ref, images, threads), predict(cand, images, threads)
    result = task.gate(
        reference_results, candidate_results, images.targets, list(ref.classes), limit, min_agreement, names
    )
    print_result(result)
    write_reports(result, junit, md, json_file)
    return result
