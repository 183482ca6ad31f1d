"""The accuracy gate's result and the statistics every task's gate shares: a
metric of the candidate against the reference on the same images, its paired
bootstrap interval, and the checks that pass or fail (each one JUnit test case).
`edgetune.compare` runs a task's gate and writes the reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Check:
    name: str
    passed: bool
    value: float
    limit: float
    message: str


@dataclass
class GateResult:
    reference: dict  # the task's metrics of each
    candidate: dict
    metric: str  # the gated metric, a key of both
    label: str  # the metric as people read it ("accuracy", "image AUROC")
    diff_points: float  # candidate - reference, in points, signed so that negative is worse
    ci_points: tuple[float, float]  # paired bootstrap 95% interval of diff_points
    agreement: float | None  # share of images both decide alike (None: the task has no such notion)
    checks: list[Check]
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # (what, reference, candidate, difference)
    per_class_points: dict[str, float] = field(default_factory=dict)  # candidate - reference per class, in points
    per_class_metric: str = "recall"
    names: dict = field(default_factory=lambda: {"reference": "reference", "candidate": "candidate"})

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def drop_points(self) -> float:
        return -self.diff_points

    def to_dict(self) -> dict:
        def plain(m: dict) -> dict:
            return {k: v for k, v in m.items() if not isinstance(v, (list, np.ndarray))}

        return {
            "passed": self.passed,
            "reference": {"name": self.names["reference"], **plain(self.reference)},
            "candidate": {"name": self.names["candidate"], **plain(self.candidate)},
            "metric": self.metric,
            f"{self.metric}_diff_points": self.diff_points,
            f"{self.metric}_diff_ci95_points": list(self.ci_points),
            "agreement": self.agreement,
            f"{self.per_class_metric}_delta_points": self.per_class_points,
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
    """The interval of a per-image mean's difference (candidate minus reference), in points."""
    d = cand_correct.astype(np.float64) - ref_correct.astype(np.float64)
    return paired_interval(lambda i: d[i].mean(), len(d), n_resamples, seed) if len(d) else (0.0, 0.0)


def drop_check(result_label: str, metric: str, drop: float, max_drop: float, ci, text: str) -> Check:
    """The gate on the metric: a drop of at most `max_drop` points."""
    return Check(
        f"{metric}_drop",
        drop <= max_drop + 1e-9,
        drop,
        max_drop,
        f"{text}: a drop of {drop:.2f} points (limit {max_drop:g}; 95% CI of the difference {ci[0]:+.2f} to "
        f"{ci[1]:+.2f} points)",
    )


def metric_gate(
    task,
    reference: list,
    candidate: list,
    targets: list,
    classes: list[str],
    max_drop: float,
    names: dict,
    n_resamples: int = 1000,
    seed: int = 0,
) -> GateResult:
    """The gate every task has: `task.metric` may drop by at most `max_drop` points
    (its sign turned for a lower-is-better metric); the interval resamples images."""
    if not (len(reference) == len(candidate) == len(targets)):
        raise ValueError(
            f"{len(reference)} reference and {len(candidate)} candidate results and {len(targets)} targets must cover "
            "the same images"
        )
    m, sign = task.metric, -1.0 if task.lower_is_better else 1.0
    rm, cm = task.results_metrics(reference, targets, classes), task.results_metrics(candidate, targets, classes)
    diff = sign * (cm[m] - rm[m]) * 100

    def stat(i):
        t = [targets[k] for k in i]
        r = task.results_metrics([reference[k] for k in i], t, classes).get(m)
        c = task.results_metrics([candidate[k] for k in i], t, classes).get(m)
        return None if r is None or c is None else sign * (c - r)

    ci = paired_interval(stat, len(targets), n_resamples, seed) or (diff, diff)
    label = getattr(task, "metric_label", m)
    text = f"{label} {rm[m]:.4f} -> {cm[m]:.4f}"
    checks = [drop_check(label, m, -diff, max_drop, ci, text)]
    rows = [(label, f"{rm[m]:.4f}", f"{cm[m]:.4f}", f"{diff:+.2f} points (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})")]
    return GateResult(rm, cm, m, label, diff, ci, task.agreement(reference, candidate), checks, rows, names=names)
