"""Bundles: the manifest, hash verification, safe unpacking, inspect."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import cv2
import numpy as np
import pytest
from conftest import run_cli

from edgetune.errors import EdgetuneError
from edgetune.run import load_run
from edgetune.runtime.bundle import load_bundle, pack, unpack


@pytest.fixture
def bundle_copy(cpu_bundle, tmp_path):
    dest = tmp_path / "bundle-cpu"
    shutil.copytree(cpu_bundle, dest)
    return dest


def test_manifest_records_the_contract(cpu_bundle):
    b = load_bundle(cpu_bundle)
    m = b.manifest
    # schema 2: the preprocessing resizes the uint8 frame, which a schema-1 reader would not do
    assert (m["format"], m["schema"], b.target, b.runtime, b.precision) == (
        "edgetune-bundle",
        2,
        "cpu",
        "onnxruntime",
        "int8",
    )
    assert m["preprocess"]["resize_dtype"] == "uint8"
    assert set(b.precisions) == {"int8", "fp32"}
    assert m["model"]["backbone"] == "test_efficientnet" and m["model"]["macs"] > 0 and m["model"]["params"] > 0
    assert m["input"]["shape"][1:] == [3, *b.spec.size] and m["input"]["layout"] == "NCHW"
    assert b.classes == ["defect", "ok"]
    stages = [s["stage"] for s in m["stages"]]
    assert (
        stages[0] == "finetune" and stages[-2:] == ["export", "compile"] and len(stages) >= 4
    )  # finetune, QAT, export, compile
    assert all(s.get("inputs_hash") for s in m["stages"])
    assert {"torch", "nncf", "onnx", "onnxruntime"} <= set(m["versions"])
    assert m["calibration"].get("hash")
    # The headline metrics are the compiled artifact's, measured through its runtime.
    assert m["metrics"]["evaluated_with"] == "onnxruntime" and m["metrics"] == {
        **m["artifacts"]["int8"]["metrics"],
        "pytorch_test": m["metrics"]["pytorch_test"],
    }
    assert m["metrics"]["test"]["n"] == len(load_run(b.source_run).split.parts["test"])
    assert set(m["files"]) == {"model.int8.onnx", "model.fp32.onnx", "README.md"}
    assert (
        b.artifact_path("fp32").name == "model.fp32.onnx" and b.artifact_size() == m["files"]["model.int8.onnx"]["size"]
    )


def test_bundle_runs_both_precisions(cpu_bundle):
    b = load_bundle(cpu_bundle)
    frame = np.full((40, 52, 3), 128, np.uint8)
    for precision in ("int8", "fp32"):
        s = b.open(threads=1, precision=precision)
        assert s.precision == precision and s.run_frames([frame, frame]).shape == (2, 2)
    with pytest.raises(EdgetuneError, match="no fp16 artifact"):
        b.open(precision="fp16")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "model.int8.onnx is truncated"),
        (
            lambda p: p.write_bytes(p.read_bytes()[:50] + bytes([p.read_bytes()[50] ^ 1]) + p.read_bytes()[51:]),
            "model.int8.onnx was modified",
        ),
        (lambda p: p.unlink(), "model.int8.onnx is missing"),
    ],
)
def test_damaged_bundle_is_refused_with_the_file_name(bundle_copy, damage, message):
    damage(bundle_copy / "model.int8.onnx")
    with pytest.raises(EdgetuneError, match=message):
        load_bundle(bundle_copy)
    proc = run_cli("inspect", bundle_copy, check=False)
    assert proc.returncode == 2 and "model.int8.onnx" in proc.stderr and "Traceback" not in proc.stderr


def test_invalid_preprocessing_in_the_manifest_is_a_clear_error(bundle_copy, tmp_path):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["preprocess"]["resize_dtype"] = "int4"
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "a.png"), np.zeros((48, 64, 3), np.uint8))
    proc = run_cli("infer", bundle_copy, "--source", tmp_path / "frames", "--out", "-", check=False)
    assert (
        proc.returncode == 2
        and "resize_dtype 'int4'" in proc.stderr
        and "manifest.json" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_inspect_shows_the_bundle(cpu_bundle):
    out = run_cli("inspect", f"{cpu_bundle}.tar.gz").stdout
    for text in (
        "files verified: yes",
        "target cpu",
        "test_efficientnet",
        "defect, ok",
        "Artifacts",
        "model.int8.onnx",
        "Stages",
        "finetune",
        "onnxruntime",
    ):
        assert text in out, text


def test_archive_round_trip_and_reuse(bundle_copy, tmp_path):
    archive = pack(bundle_copy, tmp_path / "copy.tar.gz")
    shutil.rmtree(bundle_copy)
    b = load_bundle(archive)
    assert b.root == tmp_path / "copy" and b.verified
    (b.root / "model.int8.onnx").write_bytes(b"tampered")
    with pytest.raises(EdgetuneError, match="model.int8.onnx"):
        load_bundle(archive)  # same manifest: the unpacked copy is reused, and still checked


def _evil_tar(path, member: tarfile.TarInfo, data: bytes = b"x"):
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("b/manifest.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return m


@pytest.mark.parametrize(
    "member, message",
    [
        (_member("b/../../escaped.txt"), "'..'"),
        (_member("/tmp/absolute.txt"), "absolute path"),
        (_member("b/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("b/hard", tarfile.LNKTYPE, "b/manifest.json"), "is a link"),
        (_member("b/fifo", tarfile.FIFOTYPE), "not a plain file"),
    ],
)
def test_unpacking_refuses_unsafe_members(tmp_path, member, message):
    archive = _evil_tar(tmp_path / "evil.tar.gz", member)
    with pytest.raises(EdgetuneError, match=message):
        unpack(archive)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "escaped.txt").exists()
