"""The package's shape holds: layers one way (import-linter, which fails on a
planted upward import), no import cycles, the Python API with the command line's
defaults, and the build's checks that come before any training."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_import_contracts_hold_and_catch_a_planted_violation(tmp_path):
    assert _lint(REPO).returncode == 0
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "edgetune", tree / "edgetune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    files = tree / "edgetune" / "runtime" / "files.py"
    files.write_text(
        files.read_text()
        + "\n\ndef _planted():\n    import torch  # noqa\n    from edgetune.stages import base  # noqa\n"
    )
    proc = _lint(tree)
    assert proc.returncode == 1
    assert "Layers: each imports only those below it BROKEN" in proc.stdout
    assert "never imports the training stack BROKEN" in proc.stdout and "edgetune.runtime.files -> torch" in proc.stdout


def test_no_import_cycles_counting_function_level_imports():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("edgetune")
    mods = {m for m in graph.modules if m.startswith("edgetune")}
    cycles = [
        (a, b)
        for a in mods
        for b in graph.find_modules_directly_imported_by(a)
        if b in mods and a != b and graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []


def test_api_resolves_the_commands_defaults_then_args_then_keywords():
    from edgetune import api
    from edgetune.data.augment import Augment

    values, rec = api.resolve("finetune", ["--epochs", "2", "--augment", "hflip"], img_size=48, out="runs/x")
    assert values["epochs"] == 2 and values["img_size"] == 48 and values["lr"] == 1e-3  # the CLI's default
    assert isinstance(values["augment"], Augment) and rec["img-size"] == 48 and rec["augment"] == "hflip"
    values, _ = api.resolve("quantize", ["RUN", "--out", "q"], config={"quantize": {"epochs": 1}})
    assert values["epochs"] == 1 and values["run_dir"] == Path("RUN") and values["mode"] == "qat"
    values, _ = api.resolve("finetune", ["--epochs", "5"], epochs=2, out="runs/x")
    assert values["epochs"] == 5  # command-line strings win over keywords
    with pytest.raises(TypeError, match="unknown option 'epoch'"):
        api.resolve("finetune", epoch=3)


@pytest.mark.slow
def test_api_finetune_writes_the_same_run_as_the_command(image_folder, tmp_path):
    from edgetune import api
    from edgetune.run import load_run

    out = api.finetune([*TINY, "--data", str(image_folder)], epochs=1, out=tmp_path / "api")
    run_cli("finetune", "--data", image_folder, *TINY, "--epochs", "1", "--out", tmp_path / "cli")
    a, b = load_run(out), load_run(tmp_path / "cli")
    assert a.classes == b.classes and a.split.parts["test"] == b.split.parts["test"]
    assert a.test_metrics() == b.test_metrics()  # seeded: the same training


def test_a_precision_the_runtime_lacks_is_refused_before_training(image_folder, tmp_path):
    profile = tmp_path / "cpu-fp16.yaml"
    profile.write_text("name: cpu-fp16\nruntime: onnxruntime\nprecision: fp16\n")
    proc = run_cli("build", "--target", profile, "--data", image_folder, "--out", tmp_path / "out", check=False)
    assert (
        proc.returncode == 2
        and "precision fp16" in proc.stderr
        and "int8, fp32" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "out" / "finetune").exists()


@pytest.mark.slow
def test_build_from_a_run_accepts_the_runs_own_values_and_prints_whole_paths(float_run, image_folder, tmp_path):
    """One config serves `build` and `build --from`: top-level values equal to the
    run's pass, different ones are named; bundle paths are printed whole on a
    narrow terminal."""
    import yaml

    profile = tmp_path / "cpu-fp32.yaml"
    profile.write_text("name: cpu-fp32\nruntime: onnxruntime\nprecision: fp32\n")
    cfg = tmp_path / "build.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(image_folder), "model": "test_efficientnet", "img-size": 32}))
    out = tmp_path / "a-rather-long-directory-name-for-the-build-output" / "out"
    proc = run_cli(
        "--config", cfg, "build", "--from", float_run, "--target", profile, "--out", out, env={"COLUMNS": "40"}
    )
    assert f"bundle {out / 'bundle-cpu-fp32'} accuracy" in proc.stdout
    assert not (out / "finetune").exists()
    cfg.write_text(yaml.safe_dump({"model": "resnet18", "img-size": 32}))
    proc = run_cli(
        "--config", cfg, "build", "--from", float_run, "--target", profile, "--out", tmp_path / "other", check=False
    )
    assert (
        proc.returncode == 2
        and "--model 'resnet18' (the run has 'test_efficientnet')" in proc.stderr
        and "--img-size" not in proc.stderr
    )


def test_no_module_is_longer_than_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "edgetune").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_the_architecture_page_lists_the_package_as_it_is():
    """docs/architecture.md's layout names every top-level module and folder of
    edgetune/, and nothing that is not there."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("## Layout", 1)[1].split("```")[1]
    listed = set()
    for line in block.splitlines():
        m = re.match(r"^  (\S.*?)(?:  |$)", line)
        if m:
            listed |= {name.rstrip("/") for name in m.group(1).split() if re.fullmatch(r"[a-z_]+(\.py|/)", name)}
    package = REPO / "edgetune"
    present = {
        p.name.removesuffix(".py") if p.is_file() else p.name
        for p in package.iterdir()
        if p.name not in ("__init__.py", "__pycache__") and (p.suffix == ".py" or p.is_dir())
    }
    assert {n.removesuffix(".py") for n in listed} == present
