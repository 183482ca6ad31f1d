"""Generated box data: shapes on noise that a tiny detector learns in a minute, in
each layout the detect task reads (Pascal VOC, COCO JSON, YOLO txt). For the
tests and the benchmark's smoke run: no data set to download."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("square", "disc", "bar")


def shapes(n: int = 48, size: int = 64, seed: int = 0, negatives: int = 4):
    """[(uint8 BGR image, boxes [[x1, y1, x2, y2]], labels)], the first `negatives` without shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.normal(128, 20, (size, size)).clip(0, 255).astype(np.uint8)
        boxes, labels = [], []
        for _ in range(0 if i < negatives else int(rng.integers(1, 3))):
            c = int(rng.integers(len(CLASSES)))
            s = int(rng.integers(size // 5, size // 2.5))
            for _try in range(20):  # a place that overlaps no earlier shape
                x, y = (int(v) for v in rng.integers(1, size - s - 1, 2))
                if all(x >= b[2] + 1 or x + s <= b[0] - 1 or y >= b[3] + 1 or y + s <= b[1] - 1 for b in boxes):
                    break
            else:
                continue
            if c == 0:
                cv2.rectangle(img, (x, y), (x + s - 1, y + s - 1), 235, -1)
                box = [x, y, x + s, y + s]
            elif c == 1:
                r = s // 2
                cv2.circle(img, (x + r, y + r), r, 25, -1)
                box = [x, y, x + 2 * r + 1, y + 2 * r + 1]
            else:
                h = max(3, s // 3)
                cv2.rectangle(img, (x, y), (x + s - 1, y + h - 1), 60, -1)
                cv2.rectangle(img, (x, y + h), (x + s - 1, y + 2 * h - 1), 200, -1)
                box = [x, y, x + s, y + 2 * h]
            boxes.append([float(v) for v in box])
            labels.append(c)
        out.append((cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), boxes, labels))
    return out


def write_voc(root: Path, n: int = 48, size: int = 64, seed: int = 0, negatives: int = 4) -> Path:
    """ROOT/images/*.png + ROOT/annotations/*.xml (Pascal VOC), as NEU-DET is laid out."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, (img, boxes, labels) in enumerate(shapes(n, size, seed, negatives)):
        name = f"part_{i:03d}"
        cv2.imwrite(str(root / "images" / f"{name}.png"), img)
        objects = "".join(
            f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox><xmin>{b[0]:g}</xmin>"
            f"<ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
            for b, c in zip(boxes, labels)
        )
        (root / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
    return root


def write_coco(root: Path, n: int = 48, size: int = 64, seed: int = 0, negatives: int = 4) -> Path:
    """ROOT/images/*.png + ROOT/instances.json (COCO); returns the JSON's path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (img, boxes, labels) in enumerate(shapes(n, size, seed, negatives)):
        cv2.imwrite(str(root / "images" / f"part_{i:03d}.png"), img)
        images.append({"id": i + 1, "file_name": f"part_{i:03d}.png", "width": size, "height": size})
        for b, c in zip(boxes, labels):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c + 1, "name": name} for c, name in enumerate(CLASSES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def write_yolo(root: Path, n: int = 48, size: int = 64, seed: int = 0, negatives: int = 4) -> Path:
    """ROOT/images/*.png + ROOT/labels/*.txt (class cx cy w h, normalised) + ROOT/classes.txt."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i, (img, boxes, labels) in enumerate(shapes(n, size, seed, negatives)):
        cv2.imwrite(str(root / "images" / f"part_{i:03d}.png"), img)
        lines = [
            f"{c} {(b[0] + b[2]) / 2 / size:.6f} {(b[1] + b[3]) / 2 / size:.6f} {(b[2] - b[0]) / size:.6f} "
            f"{(b[3] - b[1]) / size:.6f}"
            for b, c in zip(boxes, labels)
        ]
        (root / "labels" / f"part_{i:03d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root
