"""Object detection's data and measurement, without training: the VOC, COCO and
YOLO readers on the same generated shapes, bad annotations named, the split
stratified by the classes present, the numpy mAP against pycocotools, and the
torch-free decoding (NMS, boxes to the frame, records, alarms)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from edgetune.errors import EdgetuneError
from edgetune.tasks.detect.synthetic import CLASSES, shapes, write_coco, write_voc, write_yolo


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("boxes")
    return {
        "voc": write_voc(root / "voc", n=24),
        "coco": write_coco(root / "coco", n=24),
        "yolo": write_yolo(root / "yolo", n=24),
    }


def _read(spec, **opts):
    from edgetune import tasks

    return tasks.get("detect").source(str(spec), opts)


def test_voc_coco_and_yolo_give_the_same_boxes_and_classes(sources):
    from edgetune import tasks

    detect, classify = tasks.get("detect"), tasks.get("classification")
    truth = shapes(24)
    for kind, spec in sources.items():
        assert detect.recognises(str(spec)) and not classify.recognises(str(spec)), kind
        src = _read(spec)
        assert sorted(src.classes) == sorted(CLASSES), kind
        assert len(src.items) == 24 and src.root
        for item, (_, boxes, labels) in zip(sorted(src.items, key=lambda it: it.path), truth):
            got = item.target
            assert [src.classes[c] for c in got["labels"]] == [CLASSES[c] for c in labels], (kind, item.path)
            np.testing.assert_allclose(np.reshape(got["boxes"], (-1, 4)), np.reshape(boxes, (-1, 4)), atol=0.01)
    negatives = [it for it in _read(sources["voc"]).items if not it.target["labels"]]
    assert len(negatives) == 4  # images without boxes are legal


def test_the_split_is_stratified_by_the_classes_present(sources):
    from edgetune.data.split import make_split

    src = _read(sources["voc"])
    assert {it.group for it in src.items} <= {*CLASSES, "(no boxes)"}
    assert all(
        it.stratum == "+".join(sorted({src.classes[c] for c in it.target["labels"]}, key=src.classes.index))
        for it in src.items
        if it.target["labels"]
    )
    split = make_split(src, seed=0, val_frac=0.2, test_frac=0.25)
    for part in ("train", "val", "test"):
        groups = {src.items[[it.path for it in src.items].index(p)].keys[1] for p, _ in split.parts[part]}
        assert len(groups) >= 2, part  # every part holds several of the groups
    again = split.from_dict(json.loads(json.dumps(split.to_dict())))
    assert again.parts["test"] == split.parts["test"] and split.to_dict()["paths"] == "relative"


def _voc_copy(src, dst, name: str, xml: str):
    import shutil

    shutil.copytree(src, dst)
    (dst / "annotations" / f"{name}.xml").write_text(xml)
    return dst


BOX = "<object><name>{}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"


def test_bad_annotations_are_named(sources, tmp_path):
    voc = sources["voc"]
    outside = _voc_copy(
        voc, tmp_path / "outside", "part_005", f"<annotation>{BOX.format('disc', 50, 5, 90, 20)}</annotation>"
    )
    with pytest.raises(EdgetuneError, match=r"part_005\.xml.*outside the 64x64 image"):
        _read(outside)
    skipped = _read(outside, skip_bad=True)  # --skip-bad: left out and recorded
    assert len(skipped.items) == 23 and skipped.skipped[0].endswith("part_005.png")
    broken = _voc_copy(voc, tmp_path / "broken", "part_006", "<annotation><object>")
    with pytest.raises(EdgetuneError, match=r"part_006\.xml: malformed XML"):
        _read(broken)
    flat = _voc_copy(voc, tmp_path / "flat", "part_007", f"<annotation>{BOX.format('disc', 5, 5, 5, 20)}</annotation>")
    with pytest.raises(EdgetuneError, match=r"part_007\.xml.*zero or negative area"):
        _read(flat)

    coco = json.loads(sources["coco"].read_text())
    coco["annotations"][0]["category_id"] = 99
    (tmp_path / "unknown.json").write_text(json.dumps(coco))
    with pytest.raises(
        EdgetuneError, match=r"unknown\.json \(annotation 1, image part_004\.png\): unknown category_id 99"
    ):
        _read(tmp_path / "unknown.json", images=str(sources["coco"].parent / "images"))
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(EdgetuneError, match=r"bad\.json: malformed JSON"):
        _read(tmp_path / "bad.json")

    import shutil

    yolo = tmp_path / "yolo"
    shutil.copytree(sources["yolo"], yolo)
    (yolo / "labels" / "part_009.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(EdgetuneError, match=r"part_009\.txt, line 1: class 7 is unknown \(3 classes named\)"):
        _read(yolo)
    (yolo / "classes.txt").unlink()
    with pytest.raises(EdgetuneError, match="classes.txt or as `names:` in data.yaml"):
        _read(yolo)


def test_a_box_folder_given_to_the_classifier_names_the_detect_task(sources):
    from edgetune import tasks
    from edgetune.stages.finetune import check_feeds

    with pytest.raises(EdgetuneError, match="looks like data for --task detect"):
        check_feeds(tasks.get("classification"), str(sources["voc"]))


def _random_results(n: int, seed: int = 0):
    from edgetune.runtime.tasks.detect import Detections

    rng = np.random.default_rng(seed)
    results, targets = [], []
    for _ in range(n):
        g = rng.integers(0, 4)
        xy = rng.uniform(0, 40, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 25, (g, 2))], 1)
        labels = rng.integers(0, 3, g)
        noisy = gt + rng.normal(0, 1.5, gt.shape)
        noisy = np.concatenate(
            [np.minimum(noisy[:, :2], noisy[:, 2:] - 1), np.maximum(noisy[:, 2:], noisy[:, :2] + 1)], 1
        )
        extra = rng.uniform(0, 50, (rng.integers(0, 4), 2))
        boxes = np.concatenate([noisy, np.concatenate([extra, extra + 10], 1)])
        classes = np.concatenate([labels, rng.integers(0, 3, len(extra))])
        results.append(
            Detections(boxes.astype(np.float32), rng.uniform(0.05, 1, len(boxes)).astype(np.float32), classes)
        )
        targets.append({"boxes": gt.tolist(), "labels": labels.tolist()})
    return results, targets


def test_the_numpy_map_is_pycocotools_map():
    from edgetune.tasks.detect.metrics import Matched, coco_eval

    results, targets = _random_results(60)
    ev = coco_eval(results, targets, 3)
    ap = Matched(results, targets, 3).ap()
    assert abs(np.nanmean(ap) - ev.stats[0]) < 1e-6 and abs(np.nanmean(ap[:, 0]) - ev.stats[1]) < 1e-6
    assert 0.2 < ev.stats[1] < 0.95  # a case that could differ


def test_decoding_nms_frame_boxes_records_and_alarms():
    from edgetune.runtime.tasks.detect import DetectSession

    manifest = {"task": "detect", "classes": list(CLASSES), "detect": {"input_size": [64, 64], "score_threshold": 0.5}}
    s = DetectSession(None, manifest)
    boxes = np.array([[[10, 10, 30, 30], [11, 11, 31, 31], [11, 11, 31, 31], [40, 40, 60, 50]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.3]], np.float32)
    classes = np.array([[0, 0, 1, 2]], np.int32)
    (r,) = s.decode({"boxes": boxes, "scores": scores, "classes": classes}, [(128, 256)])  # a 256 x 128 frame
    assert r.classes.tolist() == [0, 1, 2]  # the duplicate square suppressed, the disc (another class) kept
    np.testing.assert_allclose(r.boxes[0], [40, 20, 120, 60])  # x scaled by 4, y by 2
    rec = s.record(r, origin=(100, 7))
    assert rec["class"] == "square" and rec["score"] == pytest.approx(0.9)
    assert [b["class"] for b in rec["boxes"]] == ["square", "disc"]  # the bar at 0.3 is below the threshold
    assert rec["boxes"][0]["box"] == [140.0, 27.0, 220.0, 67.0]
    assert s.alarm_values(r) == pytest.approx({"square": 0.9, "disc": 0.7, "bar": 0.3})
    assert s.flagged(r) and s.draw(np.zeros((128, 256, 3), np.uint8), r).any()
    back = DetectSession.from_json(json.loads(json.dumps(DetectSession.to_json(r))))
    np.testing.assert_allclose(back.boxes, r.boxes, atol=0.01)
    (none,) = s.decode({"boxes": boxes, "scores": scores * 0.01, "classes": classes}, [(64, 64)])
    assert len(none) == 0 and s.record(none)["class"] == "none" and not s.flagged(none)


def test_the_runtime_half_imports_without_torch():
    code = (
        "import sys; sys.modules.update(torch=None, torchvision=None, timm=None)\n"
        "import edgetune.runtime.tasks.detect as d\n"
        "from edgetune.runtime.tasks import session_class\n"
        "print(session_class('detect').schema)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr


def test_inputs_a_detector_cannot_take_are_refused_before_any_data_is_read():
    from edgetune import tasks

    detect = tasks.get("detect")
    with pytest.raises(EdgetuneError, match="--img-size 70: a detector's input must be a multiple of 32"):
        detect.check({"img_size": 70, "model": "test_resnet"})
    with pytest.raises(EdgetuneError, match="strides 8, 16, 32; vit_tiny_patch16_224 gives 16, 16, 16"):
        detect.check({"img_size": 224, "model": "vit_tiny_patch16_224"})


def test_box_aware_augmentation_moves_the_boxes_with_the_image(sources):
    import torch

    from edgetune.data.augment import Augment
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.tasks.detect.data import BoxDataset

    src = _read(sources["voc"])
    pairs = [(it.path, it.target) for it in src.items if len(it.target["labels"]) == 2][:4]
    spec = PreprocessSpec((96, 96), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    plain = BoxDataset(pairs, spec)
    x, t = plain[0]
    assert x.shape == (3, 96, 96)
    np.testing.assert_allclose(t["boxes"].numpy(), np.array(pairs[0][1]["boxes"]) * 1.5, atol=0.02)  # 64 -> 96 px
    flipped = BoxDataset(pairs, spec, Augment.parse("hflip,vflip,rot90,rrc=0.5"))
    torch.manual_seed(0)
    for i in range(len(pairs)):
        x, t = flipped[i]
        b = t["boxes"].numpy()
        assert x.shape == (3, 96, 96) and len(b) == len(t["labels"]) <= 2
        assert (b[:, 2:] > b[:, :2]).all() and b.min() >= 0 and b.max() <= 96
        for box, label in zip(b, t["labels"].tolist()):  # each box still frames its shape: dark disc, bright square
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            mean = float(x[:, y1:y2, x1:x2].mean())
            name = src.classes[label]
            assert (name != "disc" or mean < 0) and (name != "square" or mean > 0), (name, mean)


def test_mosaic_samples_frame_the_shapes_of_four_images(sources):
    import torch

    from edgetune.data.augment import Augment
    from edgetune.data.transforms import augment_ops
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.tasks.detect.data import BoxDataset

    src = _read(sources["voc"])
    pairs = [(it.path, it.target) for it in src.items if len(it.target["labels"]) == 2][:8]
    spec = PreprocessSpec((96, 96), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    mosaic = BoxDataset(pairs, spec, Augment.parse("hflip,mosaic=1"))
    torch.manual_seed(0)
    counts = []
    for i in range(len(pairs)):
        x, t = mosaic[i]
        b = t["boxes"].numpy()
        counts.append(len(b))
        assert x.shape == (3, 96, 96) and len(b) == len(t["labels"])
        assert (b[:, 2:] > b[:, :2]).all() and b.min() >= 0 and b.max() <= 96
        for box, label in zip(b, t["labels"].tolist()):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            if min(x2 - x1, y2 - y1) < 6:  # a corner cut off by the crop may hold more noise than shape
                continue
            mean = float(x[:, y1:y2, x1:x2].mean())
            name = src.classes[label]
            assert (name != "disc" or mean < 0) and (name != "square" or mean > 0), (name, mean)
    assert max(counts) > 2  # more boxes than any one image holds: the crop spans several images

    with pytest.raises(EdgetuneError, match="mosaic=0.5: .* only --task detect takes it"):
        augment_ops(Augment.parse("hflip,mosaic=0.5"))  # classification and segmentation


def test_parity_compares_a_box_with_the_box_at_the_same_place():
    """Where two classes nearly tie, the graph's best class at a location can change
    with rounding at the same score: the class match counts that, not the score."""
    from edgetune.runtime.tasks.detect import Detections
    from edgetune.tasks.detect.compare import same_boxes

    box, beside = [10.0, 10.0, 30.0, 30.0], [12.0, 10.0, 32.0, 30.0]  # IoU 0.82, two classes: NMS keeps both
    training = Detections(np.array([box, beside]), np.array([0.47, 0.30]), np.array([2, 0]), threshold=0.3)
    device = Detections(np.array([box, beside]), np.array([0.47, 0.30]), np.array([0, 2]), threshold=0.3)
    same, ious, diffs = same_boxes(training, device)
    assert same and max(diffs) < 1e-6  # each class is still found there; the scores at each place agree
    moved = Detections(np.array([box]), np.array([0.20]), np.array([2]), threshold=0.3)
    same, _, diffs = same_boxes(training, moved)
    assert not same and max(diffs) > 0.25  # a class gone, and a score that did change


def test_the_quality_target_is_the_iou_of_the_predicted_box_with_the_true_box():
    """The third head output learns this IoU; `side_iou` takes both boxes as side
    distances from one location, so it must agree with torchvision's box IoU."""
    import torch
    from torchvision.ops import box_iou

    from edgetune.tasks.detect.loss import side_iou
    from edgetune.tasks.detect.model import boxes_from

    g = torch.Generator().manual_seed(0)
    points = torch.rand(64, 2, generator=g) * 100
    pred, true = torch.rand(64, 4, generator=g) * 40, torch.rand(64, 4, generator=g) * 40
    expected = box_iou(boxes_from(points, pred), boxes_from(points, true)).diagonal()
    assert torch.allclose(side_iou(pred, true), expected, atol=1e-6)
    assert torch.allclose(side_iou(true, true), torch.ones(64))
    assert expected.min() < 0.5  # boxes that overlap a little as well as a lot
