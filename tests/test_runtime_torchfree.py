"""The device side imports and runs with torch, timm and nncf unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"torch", "torchvision", "timm", "nncf", "torch_pruning", "torchao"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the device has no torch")
    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_blocker_really_blocks():
    proc = _run("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_runtime_modules_import_without_torch():
    proc = _run("""
        import importlib, pkgutil, edgetune.runtime as rt
        names = [m.name for m in pkgutil.walk_packages(rt.__path__, "edgetune.runtime.")]
        for name in names:
            importlib.import_module(name)
        assert "edgetune.runtime.tasks.anomaly" in names  # each task's torch-free half too
        import edgetune.targets.jetson, edgetune.targets.cpu, edgetune.targets.intel, edgetune.cli.build_cmds
        assert not {"torch", "timm", "nncf"} & set(sys.modules)
        print(len(names), "modules")
    """)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[0]) >= 8


def test_bundles_load_and_run_without_torch(cpu_bundle, intel_bundle):
    proc = _run(f"""
        import numpy as np
        from edgetune.runtime.bundle import load_bundle
        frames = [np.random.default_rng(i).integers(0, 256, (50 + i, 60, 3), dtype=np.uint8) for i in range(3)]
        for path in ({str(cpu_bundle)!r}, {str(intel_bundle)!r} + ".tar.gz"):
            b = load_bundle(path)
            s = b.open(threads=1)
            logits = s.run_frames(frames)
            assert logits.shape == (3, len(b.classes)), logits.shape
            results = s.predict_frames(frames)  # the task's typed results: the same logits
            assert [r.index for r in results] == logits.argmax(1).tolist()
            print(b.target, s.name, s.precision)
        from edgetune.cli.main import main
        try:
            main(["inspect", {str(cpu_bundle)!r}])
        except SystemExit as e:
            assert e.code == 0, e.code
        assert not {{"torch", "timm", "nncf"}} & set(sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr
    assert (
        "cpu onnxruntime int8" in proc.stdout
        and "intel openvino int8" in proc.stdout
        and "files verified: yes" in proc.stdout
    )
