"""A task is a plug-in: new files plus one registration. A regression task that
lives in tests/plugin (no edit of edgetune) registers through the `edgetune.tasks`
entry point and goes through finetune, build for cpu (QAT, export, compile),
torch-free loading, bench, compare and infer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import QUICK_BENCH, REPO, run_cli

PLUGIN = Path(__file__).parent / "plugin"
MODEL = [
    "--model",
    "test_efficientnet",
    "--no-pretrained",
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--warmup-epochs",
    "0",
]


def plugin_env(tmp_path: Path) -> dict:
    """PYTHONPATH with the plug-in and its registration: a dist-info whose entry
    point names the task, as `pip install` of a plug-in package writes it."""
    site = tmp_path / "site"
    info = site / "edgetune_regression-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgetune-regression\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgetune.tasks]\nregression = edgetune_regression:TASK\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), str(REPO)])}


def brightness_images(root: Path, n: int = 48, size: int = 32, seed: int = 0) -> Path:
    """Noisy grey images whose value is their brightness, and their path,value CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = ["path,value"]
    for i in range(n):
        v = (i + 0.5) / n
        img = (40 + 175 * v + rng.normal(0, 8, (size, size))).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"part_{i:03d}.png"), img)
        rows.append(f"part_{i:03d}.png,{v:.4f}")
    (root / "values.csv").write_text("\n".join(rows) + "\n")
    return root / "values.csv"


@pytest.mark.slow
def test_a_plugged_in_task_runs_through_every_command(tmp_path):
    env = plugin_env(tmp_path)
    data = brightness_images(tmp_path / "data")
    run = tmp_path / "run"
    run_cli(
        "finetune",
        "--task",
        "regression",
        "--data",
        data,
        *MODEL,
        "--lr",
        "3e-3",
        "--epochs",
        "24",
        "--metric",
        "mae",
        "--augment",
        "hflip,vflip",  # brightness jitter would change the very value learnt
        "--out",
        run,
        env=env,
    )
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "regression" and info["history"][0]["metrics"]["test"]["mae"] < 0.15, info["history"][0][
        "metrics"
    ]["test"]

    cfg = tmp_path / "build.yaml"
    cfg.write_text("quantize:\n  epochs: 1\n  batch-size: 8\n  lr: 0.0003\nbuild:\n  precision: int8\n")
    out = tmp_path / "build"
    run_cli("--config", cfg, "build", "--from", run, "--target", "cpu", "--out", out, env=env)
    bundle = out / "bundle-cpu"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "regression" and manifest["precision"] == "int8"
    assert manifest["metrics"]["test"]["mae"] < 0.2

    # the device side: the bundle and the plug-in's runtime half, torch blocked from import
    code = (
        "import sys; sys.modules.update(torch=None, timm=None, nncf=None)\n"
        "import cv2\nfrom edgetune.runtime.bundle import load_bundle\n"
        f"s = load_bundle({str(bundle)!r}).open()\n"
        f"dark, bright = (cv2.imread({str(data.parent)!r} + f'/part_{{i:03d}}.png') for i in (0, 47))\n"
        "print(' '.join(f'{r.value:.3f}' for r in s.predict_frames([dark, bright])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    dark, bright = map(float, proc.stdout.split())
    assert dark < 0.4 < 0.6 < bright

    run_cli(
        "bench",
        bundle,
        run,
        *QUICK_BENCH,
        "--json",
        tmp_path / "bench.json",
        env=env,
    )
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["runtime"] for r in rows} == {"onnxruntime", "pytorch"} and all(r["mae"] < 0.2 for r in rows)

    run_cli("compare", run, bundle, "--max-drop", "10", "--json", tmp_path / "gate.json", env=env)
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["passed"] and gate["metric"] == "mae" and [c["name"] for c in gate["checks"]] == ["mae_drop"]

    records = tmp_path / "line.jsonl"
    run_cli(
        "infer",
        bundle,
        "--source",
        f"{data.parent}/*.png",
        "--alarm",
        "value:0.8",
        "--alarm-frames",
        "1",
        "--out",
        records,
        "--status-every",
        "0",
        env=env,
    )
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 48 and all("value" in r for r in lines)
    fired = [r["frame"] for r in lines if r["alarm"]]
    assert fired and min(fired) > 24  # only the bright half of the parts raises the alarm
