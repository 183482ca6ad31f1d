"""The CI accuracy gate: a candidate (typically the INT8 bundle) against a
reference (typically the float model) on the same labelled images.

Two gates, each one JUnit test case:
  accuracy drop   reference accuracy - candidate accuracy <= max_drop (points)
  agreement       share of images where both pick the same class >= min_agreement
The report adds F1, per-class recall deltas and a paired bootstrap 95% interval of
the accuracy difference (both models resampled on the same images).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetune.metrics import agreement as top1_agreement
from edgetune.metrics import classification_metrics


@dataclass
class Check:
    name: str
    passed: bool
    value: float
    limit: float
    message: str


@dataclass
class GateResult:
    reference: dict  # classification_metrics of each
    candidate: dict
    classes: list[str]
    diff_points: float  # candidate - reference accuracy, in points (negative: a drop)
    ci_points: tuple[float, float]  # paired bootstrap 95% interval of diff_points
    agreement: float
    recall_delta_points: dict[str, float]
    checks: list[Check]
    names: dict = field(default_factory=lambda: {"reference": "reference", "candidate": "candidate"})

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def drop_points(self) -> float:
        return -self.diff_points

    def to_dict(self) -> dict:
        keep = (
            "n",
            "accuracy",
            "balanced_accuracy",
            "f1",
            "per_class",
            "auroc",
            "aupr",
            "false_alarm_rate",
            "n_anomalous",
        )
        return {
            "passed": self.passed,
            "reference": {
                "name": self.names["reference"],
                **{k: self.reference[k] for k in keep if k in self.reference},
            },
            "candidate": {
                "name": self.names["candidate"],
                **{k: self.candidate[k] for k in keep if k in self.candidate},
            },
            "metric": "auroc" if is_anomaly_gate(self) else "accuracy",
            "accuracy_diff_points": self.diff_points,
            "accuracy_diff_ci95_points": list(self.ci_points),
            "agreement": self.agreement,
            "recall_delta_points": self.recall_delta_points,
            "checks": [c.__dict__ for c in self.checks],
        }


def paired_interval(statistic, n: int, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval, in points, of `statistic(idx)` (candidate minus
    reference on the images `idx`) over bootstrap resamples of the n images; both
    models see the same resampled images, so their pairing is kept. A resample where
    the statistic is undefined (None) is skipped; None if all were."""
    rng = np.random.default_rng(seed)
    values = [v for v in (statistic(rng.integers(0, n, n)) for _ in range(n_resamples)) if v is not None]
    return (float(np.percentile(values, 2.5) * 100), float(np.percentile(values, 97.5) * 100)) if values else None


def paired_bootstrap(
    ref_correct: np.ndarray, cand_correct: np.ndarray, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The interval of the accuracy difference (candidate minus reference), in points."""
    d = cand_correct.astype(np.float64) - ref_correct.astype(np.float64)
    return paired_interval(lambda i: d[i].mean(), len(d), n_resamples, seed) if len(d) else (0.0, 0.0)


def gate(
    reference_logits,
    candidate_logits,
    labels,
    classes: list[str],
    max_drop: float = 0.5,
    min_agreement: float = 0.99,
    names: dict | None = None,
) -> GateResult:
    """Run both gates. `max_drop` is in accuracy points (0.5 = half a percent);
    `min_agreement` a fraction in 0..1."""
    ref, cand = np.asarray(reference_logits), np.asarray(candidate_logits)
    labels = np.asarray(labels)
    if ref.shape != cand.shape or len(ref) != len(labels):
        raise ValueError(
            f"reference logits {ref.shape}, candidate logits {cand.shape} and {len(labels)} labels must cover the same images"
        )
    rm = classification_metrics(labels, ref, classes, full=False)
    cm = classification_metrics(labels, cand, classes, full=False)
    diff = (cm["accuracy"] - rm["accuracy"]) * 100
    ci = paired_bootstrap(ref.argmax(1) == labels, cand.argmax(1) == labels)
    agree = top1_agreement(ref, cand)
    recall = {c: (cm["per_class"][c]["recall"] - rm["per_class"][c]["recall"]) * 100 for c in classes}
    drop = -diff
    checks = [
        Check(
            "accuracy_drop",
            drop <= max_drop + 1e-9,
            drop,
            max_drop,
            f"accuracy {rm['accuracy']:.2%} -> {cm['accuracy']:.2%}: a drop of {drop:.2f} points (limit {max_drop:g}; 95% CI of the difference {ci[0]:+.2f} to {ci[1]:+.2f} points)",
        ),
        Check(
            "agreement",
            agree >= min_agreement - 1e-12,
            agree,
            min_agreement,
            f"top-1 agreement {agree:.2%} on {len(labels)} images (minimum {min_agreement:.2%})",
        ),
    ]
    return GateResult(
        rm,
        cm,
        list(classes),
        diff,
        ci,
        agree,
        recall,
        checks,
        names or {"reference": "reference", "candidate": "candidate"},
    )


def anomaly_gate(
    reference_logits,
    candidate_logits,
    labels,
    max_drop: float = 1.0,
    names: dict | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> GateResult:
    """The gate for anomaly models (logits as `edgetune.runtime.anomaly.score_logits`
    gives them; labels 0 normal, 1 anomalous): image AUROC may drop by at most
    `max_drop` points. Accuracy, F1 and the false-alarm rate at the threshold,
    and the flag agreement, are reported, not gated (PTQ moves scores near the
    threshold; the ranking is what the AUROC holds)."""
    from sklearn.metrics import roc_auc_score

    from edgetune.metrics import anomaly_logit_metrics
    from edgetune.runtime.anomaly import CLASSES, logits_scores

    ref, cand = np.asarray(reference_logits), np.asarray(candidate_logits)
    y = np.asarray(labels).astype(bool)
    if ref.shape != cand.shape or len(ref) != len(y):
        raise ValueError(
            f"reference logits {ref.shape}, candidate logits {cand.shape} and {len(y)} labels must cover the same images"
        )
    if y.all() or not y.any():
        from edgetune.errors import EdgetuneError

        raise EdgetuneError(
            f"The anomaly gate needs normal and anomalous images; these {len(y)} images are all {'anomalous' if y.all() else 'normal'}."
        )
    rs, cs = logits_scores(ref), logits_scores(cand)
    rm = {
        **classification_metrics(y.astype(int), ref, CLASSES, full=False),
        **anomaly_logit_metrics(y, ref),
        "f1_macro": None,
    }
    cm = {
        **classification_metrics(y.astype(int), cand, CLASSES, full=False),
        **anomaly_logit_metrics(y, cand),
        "f1_macro": None,
    }
    diff = (cm["auroc"] - rm["auroc"]) * 100

    def auroc_diff(i):
        both = y[i].any() and not y[i].all()  # AUROC needs both kinds of image
        return roc_auc_score(y[i], cs[i]) - roc_auc_score(y[i], rs[i]) if both else None

    ci = paired_interval(auroc_diff, len(y), n_resamples, seed) or (diff, diff)
    agree = top1_agreement(ref, cand)
    recall = {c: (cm["per_class"][c]["recall"] - rm["per_class"][c]["recall"]) * 100 for c in CLASSES}
    drop = -diff
    checks = [
        Check(
            "auroc_drop",
            drop <= max_drop + 1e-9,
            drop,
            max_drop,
            f"image AUROC {rm['auroc']:.4f} -> {cm['auroc']:.4f}: a drop of {drop:.2f} points (limit {max_drop:g}; 95% CI of the "
            f"difference {ci[0]:+.2f} to {ci[1]:+.2f} points); at the threshold F1 {rm['f1']:.3f} -> {cm['f1']:.3f}, false alarms "
            f"{rm['false_alarm_rate']:.2%} -> {cm['false_alarm_rate']:.2%}, flags agree on {agree:.2%}",
        )
    ]
    return GateResult(
        rm,
        cm,
        list(CLASSES),
        diff,
        ci,
        agree,
        recall,
        checks,
        names or {"reference": "reference", "candidate": "candidate"},
    )


def is_anomaly_gate(result: GateResult) -> bool:
    return any(c.name == "auroc_drop" for c in result.checks)


# --- reports -----------------------------------------------------------------


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
        ("reference_accuracy", f"{result.reference['accuracy']:.6f}"),
        ("candidate_accuracy", f"{result.candidate['accuracy']:.6f}"),
        ("accuracy_diff_ci95_points", f"{result.ci_points[0]:.4f},{result.ci_points[1]:.4f}"),
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
    r, c = result.reference, result.candidate
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
    lines += [
        "",
        "| | reference | candidate | difference |",
        "|---|---|---|---|",
    ]
    if is_anomaly_gate(result):
        lines += [
            f"| image AUROC | {r['auroc']:.4f} | {c['auroc']:.4f} | {result.diff_points:+.2f} points (95% CI {result.ci_points[0]:+.2f} to {result.ci_points[1]:+.2f}) |",
            f"| F1 (anomalous, at the threshold) | {r['f1']:.4f} | {c['f1']:.4f} | {(c['f1'] - r['f1']) * 100:+.2f} points |",
            f"| false-alarm rate | {r['false_alarm_rate']:.2%} | {c['false_alarm_rate']:.2%} | {(c['false_alarm_rate'] - r['false_alarm_rate']) * 100:+.2f} points |",
        ]
    else:
        lines += [
            f"| accuracy | {r['accuracy']:.2%} | {c['accuracy']:.2%} | {result.diff_points:+.2f} points (95% CI {result.ci_points[0]:+.2f} to {result.ci_points[1]:+.2f}) |",
            f"| F1 (macro) | {r['f1']:.4f} | {c['f1']:.4f} | {(c['f1'] - r['f1']) * 100:+.2f} points |",
        ]
    for cls in result.classes:
        lines.append(
            f"| recall `{cls}` | {r['per_class'][cls]['recall']:.2%} | {c['per_class'][cls]['recall']:.2%} | {result.recall_delta_points[cls]:+.2f} points |"
        )
    lines.append(f"| top-1 agreement | | | {result.agreement:.2%} |")
    return "\n".join(lines) + "\n"


def print_result(result: GateResult) -> None:
    from rich.table import Table

    from edgetune import log

    t = Table(
        title=f"{result.names['reference']} (reference) vs {result.names['candidate']} (candidate), {result.reference['n']} images"
    )
    for col in ("", "reference", "candidate", "difference"):
        t.add_column(col, justify="left" if not col else "right")
    r, c = result.reference, result.candidate
    if is_anomaly_gate(result):
        t.add_row(
            "image AUROC",
            f"{r['auroc']:.4f}",
            f"{c['auroc']:.4f}",
            f"{result.diff_points:+.2f} pt [{result.ci_points[0]:+.2f}, {result.ci_points[1]:+.2f}]",
        )
        t.add_row("F1 (anomalous)", f"{r['f1']:.4f}", f"{c['f1']:.4f}", f"{(c['f1'] - r['f1']) * 100:+.2f} pt")
        t.add_row(
            "false-alarm rate",
            f"{r['false_alarm_rate']:.4f}",
            f"{c['false_alarm_rate']:.4f}",
            f"{(c['false_alarm_rate'] - r['false_alarm_rate']) * 100:+.2f} pt",
        )
    else:
        t.add_row(
            "accuracy",
            f"{r['accuracy']:.4f}",
            f"{c['accuracy']:.4f}",
            f"{result.diff_points:+.2f} pt [{result.ci_points[0]:+.2f}, {result.ci_points[1]:+.2f}]",
        )
        t.add_row("F1 (macro)", f"{r['f1']:.4f}", f"{c['f1']:.4f}", f"{(c['f1'] - r['f1']) * 100:+.2f} pt")
    for cls in result.classes:
        t.add_row(
            f"recall {cls}",
            f"{r['per_class'][cls]['recall']:.4f}",
            f"{c['per_class'][cls]['recall']:.4f}",
            f"{result.recall_delta_points[cls]:+.2f} pt",
        )
    t.add_row("top-1 agreement", "", "", f"{result.agreement:.4f}")
    log.console.print(t)
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


def is_anomaly_artifact(artifact) -> bool:
    """A bundle of task anomaly or an anomaly run (fitted with --task anomaly)."""
    if artifact.bundle is not None:
        return artifact.bundle.task == "anomaly"
    return artifact.run is not None and artifact.run.task == "anomaly"


def run_compare(
    reference: Path,
    candidate: Path,
    data: str | None,
    max_drop: float,
    min_agreement: float,
    threads: int | None,
    junit: Path | None,
    md: Path | None,
    json_file: Path | None,
    skip_bad: bool = False,
    runtime: str | None = None,
    precision: str | None = None,
) -> GateResult:
    """The `compare` command: both artifacts on the same images, then the gate.
    `runtime`: run a CANDIDATE bundle through this runtime instead of its own;
    `precision`: which of its artifacts (default: its main one)."""
    from edgetune.bench.artifacts import labelled_images, open_artifact, predict
    from edgetune.errors import EdgetuneError

    ref = open_artifact(reference, "REFERENCE")
    cand = open_artifact(candidate, "CANDIDATE", runtime, precision)
    images = labelled_images(data, ref, skip_bad) or labelled_images(None, cand)
    if images is None:
        raise EdgetuneError(
            f"No labelled images to compare on: give --data (a folder, CSV or elpv); {reference} has no run with a test split on this machine."
        )
    images = images.for_classes(ref.classes, f"REFERENCE {reference}", ref.normal_class)
    if list(cand.classes) != list(ref.classes):
        raise EdgetuneError(
            f"CANDIDATE {candidate} predicts classes {cand.classes}, REFERENCE {reference} predicts {ref.classes}: they are not comparable."
        )
    ref_logits = predict(ref, images, threads)
    cand_logits = predict(cand, images, threads)
    names = {"reference": ref.label, "candidate": cand.label}
    if is_anomaly_artifact(ref):
        result = anomaly_gate(
            ref_logits, cand_logits, images.labels, max_drop if max_drop is not None else 1.0, names=names
        )
    else:
        result = gate(
            ref_logits,
            cand_logits,
            images.labels,
            images.classes,
            max_drop if max_drop is not None else 0.5,
            min_agreement,
            names=names,
        )
    print_result(result)
    write_reports(result, junit, md, json_file)
    return result
