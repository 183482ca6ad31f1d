"""Segmentation without training: both mask layouts read, broken masks refused by
name, mask paths relative in split.json, augmentation that moves image and mask
together, the device's decoding (frame size, areas, regions, alarms, JSON) and the
metrics and gate on known masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgetune.data.masks import is_mask_source, load_mask_source, read_label
from edgetune.data.split import Split, make_split
from edgetune.data.synthetic import make_masked_images
from edgetune.errors import EdgetuneError


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return make_masked_images(tmp_path_factory.mktemp("seg") / "tiles", n=8)


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    return make_masked_images(tmp_path_factory.mktemp("seg") / "parts", n=6, layout="paired")


def test_the_class_folder_layout_reads_each_folder_as_its_class(folders):
    assert is_mask_source(str(folders))
    source = load_mask_source(str(folders))
    assert source.classes == ["background", "Blob", "Crack"]  # Free: every mask empty, so background
    by_folder = {Path(it.path).parent.parent.name: it for it in source.items}
    assert by_folder["Free"].target == {"mask": None, "class": 0} and by_folder["Free"].group == "background"
    crack = by_folder["Crack"]
    assert crack.target["class"] == 2 and crack.group == "Crack" and crack.target["mask"].endswith(".png")
    label = read_label(crack.target, cv2.imread(crack.path).shape[:2])
    assert set(np.unique(label)) == {0, 2}  # mask 255 -> the folder's class


def test_the_paired_layout_reads_class_indices_and_names(paired, tmp_path):
    source = load_mask_source(str(paired))
    assert source.classes == ["background", "crack", "blob"]
    both = [it for it in source.items if "+" in it.stratum]
    assert both and all(it.group in ("crack", "blob") for it in both)  # the rarer class it shows
    values = np.unique(np.concatenate([np.unique(read_label(it.target, (64, 64))) for it in source.items]))
    assert values.tolist() == [0, 1, 2]
    # names from --classes win; a data.yaml names them when there is no classes.txt
    assert load_mask_source(str(paired), "bg,scratch,dent").classes == ["bg", "scratch", "dent"]
    copy = shutil.copytree(paired, tmp_path / "yaml")
    (copy / "classes.txt").unlink()
    (copy / "data.yaml").write_text("names: {0: ok, 1: crack, 2: blob}\n")
    assert load_mask_source(str(copy)).classes == ["ok", "crack", "blob"]


def test_a_split_stores_mask_paths_relative_and_finds_them_where_the_data_moved(folders, tmp_path):
    split = make_split(load_mask_source(str(folders)), 0, 0.2, 0.3)
    record = split.to_dict()
    assert all(not Path(y["mask"]).is_absolute() for _, y in record["train"] if y["mask"])
    moved = shutil.copytree(folders, tmp_path / "moved")
    again = Split.from_dict(json.loads(json.dumps(record)), str(moved))
    path, target = next((p, y) for p, y in again.parts["test"] if y["mask"])
    assert path.startswith(str(moved)) and target["mask"].startswith(str(moved)) and Path(target["mask"]).is_file()
    assert {g for g in ("Blob", "Crack")} <= {Path(p).parent.parent.name for p, _ in split.parts["test"]}


def _broken(src: Path, dst: Path) -> Path:
    return shutil.copytree(src, dst)


def test_broken_masks_are_refused_naming_each_file(folders, paired, tmp_path):
    data = _broken(folders, tmp_path / "tiles")
    crack = sorted((data / "Crack" / "Imgs").glob("*.png"))
    cv2.imwrite(str(crack[0]), np.zeros((40, 64), np.uint8))  # the wrong size
    crack[1].unlink()  # missing
    with pytest.raises(EdgetuneError) as e:
        load_mask_source(str(data))
    text = str(e.value)
    assert "2 mask problem(s)" in text and f"{crack[0]} is 64x40 px but its image" in text
    assert f"{crack[1].with_suffix('.jpg')}: no mask (expected {crack[1].name} beside it)" in text

    data = _broken(paired, tmp_path / "parts")
    mask = sorted((data / "masks").glob("*.png"))[0]
    cv2.imwrite(str(mask), np.full((64, 64), 255, np.uint8))
    with pytest.raises(EdgetuneError, match=rf"{mask}: value\(s\) \[255\] outside the 3 classes.*0/255 mask"):
        load_mask_source(str(data))


def test_a_defect_free_folder_without_masks_needs_naming(folders, tmp_path):
    data = _broken(folders, tmp_path / "tiles")
    for png in (data / "Free" / "Imgs").glob("*.png"):
        png.unlink()
    with pytest.raises(EdgetuneError, match="free_000.jpg: no mask.*--background FOLDER"):
        load_mask_source(str(data))
    assert load_mask_source(str(data), background="Free").classes == ["background", "Blob", "Crack"]
    with pytest.raises(EdgetuneError, match="--background Good: no such folder.*Blob, Crack, Free"):
        load_mask_source(str(data), background="Good")


def test_augmentation_moves_the_mask_with_the_image(folders):
    from edgetune.data.augment import Augment
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.tasks.segment.data import MaskDataset

    source = load_mask_source(str(folders))
    blobs = [(it.path, it.target) for it in source.items if it.group == "Blob"]
    spec = PreprocessSpec((32, 32), (0.5,) * 3, (0.25,) * 3)
    data = MaskDataset(blobs, spec, Augment.parse("hflip,vflip,rot90,rotate=20,rrc=0.7"))
    for i in range(len(blobs)):
        x, y = data[i]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype.is_floating_point is False
        if (y > 0).sum() >= 4 and (y == 0).sum() >= 4:  # the bright blob stays under its mask
            assert x[0][y > 0].mean() > x[0][y == 0].mean() + 1.0


# --- the device side -----------------------------------------------------------------

MANIFEST = {"task": "segment", "classes": ["background", "crack", "blob"], "segment": {"min_area": 4}}


def _session():
    from edgetune.runtime.tasks.segment import SegmentSession

    return SegmentSession(None, MANIFEST)


def test_decoding_maps_the_mask_onto_the_frame_with_areas_regions_and_alarms():
    from edgetune.camera.alarm import parse_alarm

    session = _session()
    net = np.zeros((1, 8, 8), np.uint8)
    net[0, 1:3, 1:3] = 1  # a crack in the top left quarter
    net[0, 6, 6] = 2  # one blob pixel: 8 frame pixels
    (result,) = session.decode({"mask": net, "defect_score": np.array([0.9])}, [(16, 32)])
    assert result.mask.shape == (16, 32) and result.area(1) == 2 * 2 * 2 * 4 and result.area(2) == 8
    rec = session.record(result, origin=(100, 50))
    assert rec["class"] == "crack" and rec["areas"] == {"crack": 32, "blob": 8}
    assert rec["regions"][0] == {"class": "crack", "area": 32, "box": [104, 52, 8, 4]}
    assert rec["score"] == pytest.approx(32 / 512, abs=1e-5) and session.flagged(result)
    assert session.alarm_values(result) == {"crack": 32.0, "blob": 8.0, "defect": 40.0}
    session.check_alarm(parse_alarm("crack:30px"))
    with pytest.raises(EdgetuneError, match="unit px, e.g. crack:200px"):
        session.check_alarm(parse_alarm("crack:0.5"))
    with pytest.raises(EdgetuneError, match="it has crack, blob, defect"):
        session.check_alarm(parse_alarm("rust:3px"))
    back = session.from_json(json.loads(json.dumps(session.to_json(result))))
    assert np.array_equal(back.mask, result.mask) and back.regions == result.regions
    overlay = session.draw(np.zeros((16, 32, 3), np.uint8), result)
    assert overlay.shape == (16, 32, 3) and overlay[5, 5].any() and not overlay[0, 20].any()
    clean = session.decode({"mask": np.zeros((1, 8, 8), np.uint8), "defect_score": np.zeros(1)}, [(8, 8)])[0]
    assert session.record(clean)["class"] == "background" and not session.flagged(clean)


def test_metrics_and_the_gate_on_known_masks(tmp_path):
    from edgetune.runtime.tasks.segment import Segmentation
    from edgetune.tasks.segment.gate import gate
    from edgetune.tasks.segment.metrics import segmentation_metrics

    truth = np.zeros((10, 10), np.uint8)
    truth[:4, :4] = 1
    cv2.imwrite(str(tmp_path / "m.png"), truth * 255)
    targets = [{"mask": str(tmp_path / "m.png"), "class": 1}, {"mask": None, "class": 0}]
    pred = truth.copy()
    pred[:4, 3] = 0  # 12 of the 16 crack pixels found
    results = [Segmentation(pred, 0.9, 4), Segmentation(np.zeros((10, 10), np.uint8), 0.1, 4)]
    m = segmentation_metrics(results, targets, ["background", "crack"])
    assert m["per_class"]["crack"]["iou"] == pytest.approx(12 / 16)
    assert m["per_class"]["background"]["iou"] == pytest.approx(184 / 188)
    assert m["miou"] == pytest.approx((12 / 16 + 184 / 188) / 2) and m["miou_defects"] == pytest.approx(0.75)
    assert m["image_auroc"] == 1.0 and m["image_f1"] == 1.0 and m["region_recall"] == 1.0
    same = gate(results, results, targets, ["background", "crack"], 1.0, {"reference": "a", "candidate": "b"})
    assert same.passed and same.diff_points == 0 and same.metric == "miou"
    worse = [Segmentation(np.zeros((10, 10), np.uint8), 0.2, 4), results[1]]
    failed = gate(results, worse, targets, ["background", "crack"], 1.0, {"reference": "a", "candidate": "b"})
    assert not failed.passed and failed.diff_points < -30 and failed.per_class_points["crack"] == -75.0


def test_loader_workers_start_after_the_parent_used_opencv_threads(tmp_path):
    """QAT resizes its calibration images in the main process, then forks loader
    workers: a worker forked with OpenCV's thread pool alive hung on its first
    OpenCV call (--workers 1 in the segmentation benchmark's QAT)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, cv2, torch\n"
        "from edgetune.data.dataset import make_loader\n"
        "class D(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 4\n"
        "    def __getitem__(self, i): return torch.from_numpy(cv2.resize(np.zeros((300, 300), np.uint8), (8, 8))), 0\n"
        "if __name__ == '__main__':\n"
        "    cv2.setNumThreads(2)\n"
        "    cv2.resize(np.zeros((2000, 2000, 3), np.float32), (1000, 1000))  # the pool is alive\n"
        "    for epoch in range(2):\n"
        "        assert sum(len(x) for x, _ in make_loader(D(), 2, 1)) == 4\n"
        "    print(cv2.getNumThreads())\n"
    )
    (tmp_path / "fork.py").write_text(code)
    proc = subprocess.run([sys.executable, str(tmp_path / "fork.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and int(proc.stdout) == 2, proc.stderr  # the parent keeps its OpenCV threads


def test_dice_counts_only_the_defect_classes_in_the_batch():
    import torch

    from edgetune.tasks.segment.hooks import soft_dice

    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, 2:5, 2:5] = 1  # class 1 present, class 2 absent
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0][y == 0] = 8.0
    logits[:, 1][y == 1] = 8.0
    sure = float(soft_dice(logits, y))
    logits[:, 2] = 4.0  # 2% on the absent class everywhere: cross-entropy's to punish (Dice counted it as 0.7)
    assert float(soft_dice(logits, y)) == pytest.approx(sure, abs=0.05) and sure < 0.1
    assert float(soft_dice(logits, torch.zeros_like(y))) == 0  # no defect in the batch


def test_the_sampler_draws_rare_class_images_more_often(folders, paired):
    import types

    from edgetune.tasks.segment.data import MaskDataset
    from edgetune.tasks.segment.hooks import SegmentHooks

    cfg = types.SimpleNamespace(mixup=0.0, balance="sampler", label_smoothing=0.0)
    for root in (folders, paired):
        source = load_mask_source(str(root))
        rare = source.items[-1].group  # keep two images of one class: it becomes the rare one
        items = [it for it in source.items if it.group != rare] + [it for it in source.items if it.group == rare][:2]
        hooks = SegmentHooks(source.classes, cfg)
        assert hooks.dice > 0  # the sampler keeps the Dice term
        weights = hooks.sample_weights(MaskDataset([(it.path, it.target) for it in items], spec=None)).numpy()
        labels = [read_label(it.target, cv2.imread(it.path).shape[:2]) for it in items]
        shown = [{c for c in np.unique(label) if c} or {0} for label in labels]
        share = {c: sum(c in s for s in shown) / len(shown) for c in set().union(*shown)}
        # 1/sqrt(share) of the rarest class an image shows; defect-free images count as background
        assert weights == pytest.approx([max(share[c] ** -0.5 for c in s) for s in shown])
        rarest = min(share, key=share.get)
        assert all(rarest in s for s, w in zip(shown, weights) if w == weights.max())
        assert weights.max() > weights.min()
