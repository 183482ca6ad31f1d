"""The CLI as a device has it (`pip install 'edgetune[onnxruntime]'`): no torch,
no scikit-learn, no SSH libraries. What runs there runs (bench of a bundle, its
table readable in a log), and what needs the build install says so in one
paragraph instead of a traceback."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from conftest import REPO, run_cli

BUILD_STACK = ["torch", "torchvision", "timm", "nncf", "torch_pruning", "torchao", "onnx", "sklearn", "scipy",
               "matplotlib", "PIL", "paramiko", "elpv_dataset"]  # fmt: skip


@pytest.fixture
def device(tmp_path) -> dict:
    """An environment whose every Python process (the CLI and the benchmark runner it
    starts) finds none of the build machine's packages."""
    site = tmp_path / "device-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys
        BLOCKED = {set(BUILD_STACK)!r}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
    """)
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "COLUMNS": "80"}


def test_bench_of_a_bundle_runs_on_a_device_install_and_its_table_reads_in_a_log(cpu_bundle, device, tmp_path):
    proc = run_cli(
        "bench", cpu_bundle, "--no-baseline", "--batch", "1", "--warmup", "1", "--min-time", "0.1", "--min-runs", "5",
        "--json", tmp_path / "bench.json", env=device,
    )  # fmt: skip
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["runtime"] == "onnxruntime" and rows[0]["accuracy"] >= 0.8
    assert rows[0]["python"]["heavy_modules_loaded"] == []
    # not a terminal, 80 columns: the table keeps its natural width, one line per row, no cell folded
    line = next(line for line in proc.stderr.splitlines() if "bundle-cpu" in line and "│" in line)
    assert "onnxruntime" in line and f"{rows[0]['latency_ms_p50']:.3f}" in line


def test_a_build_command_on_a_device_install_says_what_to_install(image_folder, device, tmp_path):
    proc = run_cli("finetune", "--data", image_folder, "--out", tmp_path / "run", env=device, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "edgetune finetune needs" in proc.stderr and "pip install 'edgetune[train]'" in proc.stderr
    help_text = run_cli("--help", env=device).stdout
    assert "finetune" in help_text and "infer" in help_text  # the command list itself needs no build stack
