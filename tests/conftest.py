"""Shared fixtures: small generated image sets, a trained tiny run, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a network
REPO = Path(__file__).resolve().parents[1]
EDGETUNE = [sys.executable, "-m", "edgetune.cli.main"]


def make_images(root: Path, n_per_class: int = 30, size: int = 48, classes=("ok", "defect"), seed: int = 0, gray: bool = False) -> Path:
    """A folder of class sub-folders whose classes a tiny model can tell apart:
    'defect' images carry a dark diagonal crack on a noisy bright cell."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.normal(170, 25, (size, size)).clip(0, 255).astype(np.uint8)
            if c % 2 == 1:
                off = int(rng.integers(-size // 4, size // 4))
                cv2.line(img, (0, size // 2 + off), (size - 1, size // 2 - off), 20, max(2, size // 12))
            if c >= 2:
                cv2.circle(img, (size // 2, size // 2), size // 5, 250, -1)
            if not gray:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                img[..., 0] = np.clip(img[..., 0].astype(int) + 30 * c, 0, 255)
            cv2.imwrite(str(d / f"{name}_{i:03d}.png"), img)
    return root


def run_cli(*args, check: bool = True, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EDGETUNE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgetune {' '.join(map(str, args))} exited {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc


TINY = ["--model", "test_efficientnet", "--no-pretrained", "--img-size", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup-epochs", "0"]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="session")
def float_run(tmp_path_factory, image_folder) -> Path:
    """A fine-tuned tiny float run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "float"
    run_cli("finetune", "--data", image_folder, *TINY, "--epochs", "8", "--out", out)
    return out
