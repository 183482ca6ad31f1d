"""The CI gate: built cases through `gate()`, and `edgetune compare` through the
CLI on a tiny model (exit codes 0/1/2, JUnit, Markdown, JSON)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import TINY, invoke, make_fp32_bundle

from edgetune.compare import junit_xml, markdown
from edgetune.tasks.classification.gate import gate
from edgetune.tasks.gate import paired_bootstrap

CLASSES = ["ok", "defect"]


def _logits(pred: np.ndarray) -> np.ndarray:
    out = np.zeros((len(pred), 2), np.float32)
    out[np.arange(len(pred)), pred] = 3.0
    return out


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    ref = labels.copy()
    ref[:20] = 1 - ref[:20]  # the reference is 90% right
    return labels, ref


def _testcases(xml: str) -> dict[str, bool]:
    root = ET.fromstring(xml)
    return {tc.get("name"): tc.find("failure") is None for tc in root.iter("testcase")}


def test_gate_passes_identical_models(case):
    labels, ref = case
    r = gate(_logits(ref), _logits(ref), labels, CLASSES, max_drop=0.5, min_agreement=0.99)
    assert r.passed and r.diff_points == 0 and r.agreement == 1.0 and r.ci_points == (0.0, 0.0)
    assert _testcases(junit_xml(r)) == {"accuracy_drop": True, "agreement": True}
    assert "PASSED" in markdown(r)


def test_gate_fails_an_accuracy_drop(case):
    labels, ref = case
    cand = ref.copy()
    cand[50:55] = 1 - cand[50:55]  # 5 more mistakes on 200 images: -2.5 points
    r = gate(_logits(ref), _logits(cand), labels, CLASSES, max_drop=0.5, min_agreement=0.9)
    assert not r.passed and r.drop_points == pytest.approx(2.5)
    assert r.ci_points[0] <= -2.5 <= r.ci_points[1] and r.ci_points[1] < 0  # every resample loses accuracy
    assert _testcases(junit_xml(r)) == {"accuracy_drop": False, "agreement": True}
    assert sum(abs(v) for v in r.per_class_points.values()) > 0
    md = markdown(r)
    assert "FAILED" in md and "| accuracy drop | **FAIL** | 2.50 points | <= 0.5 points |" in md
    # A looser limit passes the same models.
    assert gate(_logits(ref), _logits(cand), labels, CLASSES, max_drop=3.0, min_agreement=0.9).passed


def test_gate_fails_low_agreement_at_equal_accuracy(case):
    labels, ref = case
    cand = ref.copy()
    cand[:2] = 1 - cand[:2]  # two of the reference's mistakes fixed ...
    cand[100:102] = 1 - cand[100:102]  # ... and two right answers lost
    r = gate(_logits(ref), _logits(cand), labels, CLASSES, max_drop=0.5, min_agreement=0.99)
    assert r.diff_points == pytest.approx(0.0) and r.agreement == pytest.approx(0.98)
    assert _testcases(junit_xml(r)) == {"accuracy_drop": True, "agreement": False}
    assert r.ci_points[0] < 0 < r.ci_points[1]


def test_paired_bootstrap_interval_is_paired():
    # Both models are wrong on the same hard half: the difference never varies.
    same = np.array([True, False] * 50)
    assert paired_bootstrap(same, same) == (0.0, 0.0)
    with pytest.raises(ValueError):
        gate(_logits(np.zeros(3, int)), _logits(np.zeros(4, int)), np.zeros(3, int), CLASSES)


def test_compare_cli_on_a_tiny_model(float_run, fp32_bundle, tmp_path, capsys):
    junit, md, js = tmp_path / "gate.xml", tmp_path / "gate.md", tmp_path / "gate.json"
    # The fp32 bundle against its float run, on the run's own test split: passes.
    assert invoke("compare", float_run, fp32_bundle, "--junit", junit, "--markdown", md, "--json", js) == 0
    assert _testcases(junit.read_text()) == {"accuracy_drop": True, "agreement": True}
    result = json.loads(js.read_text())
    assert result["passed"] and result["agreement"] == 1.0 and result["candidate"]["name"].startswith("fp32")
    assert md.read_text().startswith("### edgetune accuracy gate: PASSED")
    # A bundle that feeds BGR to a model that tells its classes by colour alone
    # fails the strict gate: exit status 1.
    colour_run = _colour_only_run(tmp_path)
    bgr = make_fp32_bundle(colour_run, tmp_path / "bgr", channel_order="BGR")
    assert invoke("compare", colour_run, bgr, "--max-drop", "0", "--min-agreement", "1", "--junit", junit) == 1
    assert "accuracy gate failed" in capsys.readouterr().err
    assert not all(_testcases(junit.read_text()).values())
    # Usage errors: exit status 2 with a message naming the input.
    assert invoke("compare", float_run, tmp_path / "missing") == 2
    assert "CANDIDATE" in capsys.readouterr().err
    assert invoke("compare", float_run, fp32_bundle, "--max-drop", "-1") == 2
    # --precision gates another artifact of the bundle (e.g. OpenVINO's bf16); one it lacks is a usage error.
    assert invoke("compare", float_run, fp32_bundle, "--precision", "fp32", "--json", js) == 0
    assert "fp32" in json.loads(js.read_text())["candidate"]["name"]
    capsys.readouterr()
    assert invoke("compare", float_run, fp32_bundle, "--precision", "bf16") == 2
    assert "no bf16 artifact" in capsys.readouterr().err


def _colour_only_run(tmp_path):
    """A tiny float run on two classes that differ only in colour (reddish and
    bluish noise): swapping R and B swaps its answers."""
    import cv2

    rng = np.random.default_rng(0)
    for name, (b, r) in {"blue": (230, 20), "red": (20, 230)}.items():
        (tmp_path / "colour" / name).mkdir(parents=True)
        for i in range(20):
            img = rng.normal(0, 20, (32, 32, 3)) + np.array([b, 100, r])
            cv2.imwrite(str(tmp_path / "colour" / name / f"{i}.png"), img.clip(0, 255).astype(np.uint8))
    out = tmp_path / "colour_run"
    assert invoke("finetune", "--data", tmp_path / "colour", *TINY, "--epochs", "8", "--out", out) == 0
    # above chance on colour alone: it looks at colour
    assert json.loads((out / "run.json").read_text())["history"][0]["metrics"]["test"]["accuracy"] >= 0.75
    return out
