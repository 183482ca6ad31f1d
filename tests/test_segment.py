"""Semantic segmentation through every command, on generated tiles (dark strokes
and bright blobs on noise, 64 px, the magnetic-tile layout): fine-tuning finds the
masks, one build makes INT8 bundles for cpu, intel and jetson whose masks agree
with the float model's, the device side loads without torch, `infer` records areas
and regions and alarms on area, and two torchrun processes fit one model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, run_cli

from edgetune.data.synthetic import make_masked_images

pytestmark = pytest.mark.slow
MODEL = ["--model", "test_efficientnet", "--no-pretrained", "--img-size", "64", "--batch-size", "8"]
RECIPE = ["--lr", "5e-3", "--label-smoothing", "0", "--warmup-epochs", "0"]


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory) -> Path:
    return make_masked_images(tmp_path_factory.mktemp("segment") / "tiles", n=16)


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory, seg_data) -> Path:
    out = tmp_path_factory.mktemp("segment-runs") / "float"
    run_cli("finetune", "--task", "segment", "--data", seg_data, *MODEL, *RECIPE, "--epochs", "12", "--out", out)
    return out


@pytest.fixture(scope="session")
def seg_build(tmp_path_factory, seg_run) -> Path:
    """One build for cpu, intel and jetson (INT8 by QAT), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("segment-build")
    cfg = root / "build.yaml"
    cfg.write_text("quantize:\n  epochs: 2\n  batch-size: 8\n  lr: 0.0005\n  label-smoothing: 0\n")
    out = root / "build"
    targets = ["--target", "cpu", "--target", "intel", "--target", "jetson"]
    run_cli("--config", cfg, "build", "--from", seg_run, *targets, "--precision", "int8", "--out", out)
    return out


def test_fine_tuning_finds_the_masks_and_evaluate_reports_miou(seg_run, tmp_path):
    info = json.loads((seg_run / "run.json").read_text())
    test = info["history"][0]["metrics"]["test"]
    assert info["task"] == "segment" and info["classes"] == ["background", "Blob", "Crack"]
    assert test["miou_defects"] >= 0.6, test
    run_cli("evaluate", seg_run, "--json", tmp_path / "eval.json")
    m = json.loads((tmp_path / "eval.json").read_text())
    assert m["miou"] == pytest.approx(test["miou"]) and m["per_class"]["Crack"]["iou"] > 0.3
    assert (seg_run / "gallery_test.png").is_file() and len(m["per_image"]) == test["n"]


def test_one_build_makes_int8_bundles_for_every_target(seg_build, seg_run):
    float_miou = json.loads((seg_run / "run.json").read_text())["history"][0]["metrics"]["test"]["miou"]
    for target in ("cpu", "intel", "jetson"):
        manifest = json.loads((seg_build / f"bundle-{target}" / "manifest.json").read_text())
        assert manifest["task"] == "segment" and manifest["schema"] >= 3 and manifest["precision"] == "int8"
        assert manifest["segment"]["mask_size"] == [64, 64] and manifest["segment"]["min_area"] >= 1
        assert manifest["metrics"]["test"]["miou"] > float_miou - 0.1, (target, manifest["metrics"]["test"])
    jetson = json.loads((seg_build / "bundle-jetson" / "manifest.json").read_text())
    assert jetson["artifacts"]["int8"]["checks"]["tensorrt_rules"] == "passed"


def test_int8_masks_agree_with_the_float_model(seg_build, seg_run, seg_data, tmp_path):
    run_cli("compare", seg_run, seg_build / "bundle-intel", "--max-drop", "10", "--json", tmp_path / "gate.json")
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["passed"] and gate["metric"] == "miou" and gate["agreement"] >= 0.9
    run_cli("verify", seg_build / "bundle-cpu", "--images", seg_data, "--json", tmp_path / "verify.json")
    parity = json.loads((tmp_path / "verify.json").read_text())
    assert parity["passed"] and parity["max_rel_diff"] < 0.05  # under 5% of any image's pixels classed otherwise


def test_the_bundle_segments_without_torch(seg_build, seg_data):
    bundle = seg_build / "bundle-cpu"
    crack = sorted((seg_data / "Crack" / "Imgs").glob("*.jpg"))[0]
    code = (
        "import sys; sys.modules.update(torch=None, timm=None, nncf=None, torchvision=None)\n"
        "import cv2, json\nfrom edgetune.runtime.bundle import load_bundle\n"
        f"s = load_bundle({str(bundle)!r}).open()\n"
        f"frame = cv2.imread({str(crack)!r})\n"
        "big = cv2.resize(frame, (160, 96))\n"
        "(a, b) = s.predict_frames([frame, big])\n"
        "print(json.dumps([a.mask.shape, b.mask.shape, s.record(a, (10, 20)), b.area(2)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    small, big, record, big_crack = json.loads(proc.stdout)
    assert small == [64, 64] and big == [96, 160]  # each mask at its frame's size
    assert record["class"] == "Crack" and record["areas"]["Crack"] > 20 and big_crack > 3 * record["areas"]["Crack"]
    assert all(r["box"][0] >= 10 and r["box"][1] >= 20 for r in record["regions"])  # in frame pixels, ROI added


def test_infer_records_areas_and_regions_and_alarms_on_area(seg_build, seg_data, tmp_path):
    records, flagged = tmp_path / "line.jsonl", tmp_path / "flagged"
    frames = sorted((seg_data / "Free" / "Imgs").glob("*.jpg"))[:3] + sorted(
        (seg_data / "Crack" / "Imgs").glob("*.jpg")
    )
    source = tmp_path / "frames"
    source.mkdir()
    for i, f in enumerate(frames):  # three clean tiles, then the cracked ones
        cv2.imwrite(str(source / f"{i:03d}.png"), cv2.imread(str(f)))
    run_cli(
        "infer",
        seg_build / "bundle-intel",
        "--source",
        f"{source}/*.png",
        "--alarm",
        "Crack:40px",
        "--alarm-frames",
        "2",
        "--save-flagged",
        flagged,
        "--out",
        records,
        "--status-every",
        "0",
    )
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == len(frames)
    assert all(r["class"] == "background" and not r["regions"] for r in lines[:3])
    cracked = lines[3:]
    assert sum(r["class"] == "Crack" for r in cracked) >= len(cracked) - 2
    assert all(sum(g["area"] for g in r["regions"] if g["class"] == "Crack") <= r["areas"]["Crack"] for r in cracked)
    fired = [r["frame"] for r in lines if r["alarm"]]
    assert fired and min(fired) >= 4 and lines[fired[0]]["alarm"] == "Crack:40px"  # two frames in a row
    assert len(list(flagged.glob("*-map.png"))) >= len(cracked) - 2 and not (flagged / "frame-000000.png").exists()
    bad = run_cli(
        "infer", seg_build / "bundle-intel", "--source", f"{source}/*.png", "--alarm", "Crack:0.5", check=False
    )
    assert bad.returncode != 0 and "with the unit px" in bad.stderr


def test_pruning_shrinks_the_backbone_and_keeps_the_head(seg_run, tmp_path):
    out = tmp_path / "pruned"
    run_cli("prune", seg_run, "--ratio", "0.3", "--epochs", "1", "--batch-size", "8", "--out", out)
    info = json.loads((out / "run.json").read_text())
    after = info["history"][-1]["metrics"]
    assert after["after"]["macs"] < 0.85 * after["before"]["macs"]
    assert info["arch"]["head"]["attrs"]["out_channels"] == 3  # the class head keeps its classes


def test_two_torchrun_processes_fit_one_model_on_the_whole_split(seg_data, tmp_path):
    from test_distributed import probes, rank_output, torchrun

    out = tmp_path / "run"
    args = ["finetune", "--task", "segment", "--data", seg_data, *MODEL[:-1], "4", *RECIPE, "--epochs", "2"]
    cmd, env, probe = torchrun([*args, "--out", out], tmp_path, "segment")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        proc.stdout + proc.stderr + "".join(rank_output(tmp_path, "segment", r) for r in (0, 1))
    )
    ranks = probes(probe)
    (fit0,), (fit1,) = ranks[0]["fits"], ranks[1]["fits"]
    assert fit0["weights"] == fit1["weights"]  # one model
    # validation gathers every rank's confusion counts: both see the whole split's mIoU
    assert [h["val_miou"] for h in fit0["history"]] == [h["val_miou"] for h in fit1["history"]]
    seen = [set(s["indices"]) for s in ranks[0]["samples"][:1] + ranks[1]["samples"][:1]]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1])
    assert not any(w.endswith("run.json") for w in ranks[1]["writes"]) and (out / "run.json").is_file()
    n_val = len(json.loads((out / "split.json").read_text())["val"])
    assert n_val >= 4 and np.isfinite(fit0["history"][-1]["val_miou"])
