"""Box data sources for `--task detect`, told apart by their layout:

    Pascal VOC   FOLDER/images/ + FOLDER/annotations/*.xml (NEU-DET's layout): each
                 box's class is its <name>, whatever the file is called
    COCO JSON    --data instances.json: its images beside it, under FOLDER/images/,
                 or under --images FOLDER
    YOLO txt     FOLDER/images/ + FOLDER/labels/*.txt (class cx cy w h, normalised),
                 class names from FOLDER/classes.txt or FOLDER/data.yaml

Each image's target is {"boxes": [[x1, y1, x2, y2], ...] in its own pixels,
"labels": [class index, ...]}; an image without boxes is a legal negative. A box
outside the image, a zero-area box, an unknown class and a malformed file are
errors naming the file (with --skip-bad such images are left out and counted)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from edgetune.data.sources import IMAGE_SUFFIXES, Item, Source
from edgetune.errors import EdgetuneError
from edgetune.log import get

logger = get(__name__)
TOLERANCE = 1.0  # pixels a box may stick out of its image (VOC counts from 1): clipped, not refused
NEGATIVE = "(no boxes)"  # the split group of images without boxes
HELP = (
    "a folder with images/ and annotations/*.xml (Pascal VOC), a COCO instances .json, or a folder with images/ and "
    "labels/*.txt (YOLO, class names in classes.txt or data.yaml)"
)


class BadAnnotation(ValueError):
    """One image's annotation is unusable (named by its file)."""


def kind(spec: str) -> str | None:
    """ "voc", "coco", "yolo" or None, from the layout alone (cheap)."""
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() != ".json":
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
        return "coco" if '"annotations"' in head or '"images"' in head else None
    if not (path / "images").is_dir():
        return None
    if (path / "annotations").is_dir() and any((path / "annotations").rglob("*.xml")):
        return "voc"
    if (path / "labels").is_dir():
        return "yolo"
    return None


def read_source(spec: str, opts: dict) -> Source:
    found = kind(spec)
    if not Path(spec).exists():
        raise EdgetuneError(f"--data {spec}: no such file or folder. --task detect reads {HELP}.")
    if found is None:
        raise EdgetuneError(f"--data {spec}: not box data. --task detect reads {HELP}.")
    reader = {"voc": _voc, "coco": _coco, "yolo": _yolo}[found]
    classes, rows, root = reader(Path(spec), opts)
    return _source(spec, classes, rows, root, opts.get("skip_bad", False))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # PIL raises many types; the image check names the file again
        raise BadAnnotation(f"{path}: cannot read the image's size ({str(e).splitlines()[0] or type(e).__name__})")


def check_box(box, size: tuple[int, int], where: str) -> list[float]:
    """A box as [x1, y1, x2, y2] inside its (width, height) image, or BadAnnotation naming `where`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = size
    if not (x2 > x1 and y2 > y1):
        raise BadAnnotation(f"{where}: box {[x1, y1, x2, y2]} has zero or negative area (x2 <= x1 or y2 <= y1)")
    if x1 < -TOLERANCE or y1 < -TOLERANCE or x2 > w + TOLERANCE or y2 > h + TOLERANCE:
        raise BadAnnotation(f"{where}: box {[x1, y1, x2, y2]} lies outside the {w}x{h} image")
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))]


def _source(spec: str, classes: list[str], rows: list, root: Path, skip_bad: bool) -> Source:
    """rows: (image path, boxes, labels) or (image path, BadAnnotation)."""
    bad = [(p, r[0]) for p, *r in rows if isinstance(r[0], BadAnnotation)]
    if bad and not skip_bad:
        listing = "; ".join(str(e) for _, e in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise EdgetuneError(
            f"--data {spec}: {len(bad)} image(s) have unusable annotations: {listing}. Fix the annotations, or pass "
            "--skip-bad to leave those images out (they are recorded in the run)."
        )
    if bad:
        logger.warning("Skipped %d image(s) with unusable annotations (--skip-bad); e.g. %s", len(bad), bad[0][1])
    good = [(p, boxes, labels) for p, *r in rows if not isinstance(r[0], BadAnnotation) for boxes, labels in [r]]
    if not good:
        raise EdgetuneError(f"--data {spec}: no usable images were found.")
    if not any(labels for _, _, labels in good):
        raise EdgetuneError(f"--data {spec}: no image has a box; a detector needs boxes to learn from.")
    items = [_item(p, boxes, labels, classes) for p, boxes, labels in good]
    return Source(spec, classes, _merge_small_groups(items), skipped=sorted(str(p) for p, _ in bad), root=str(root))


def _item(path: Path, boxes: list, labels: list[int], classes: list[str]) -> Item:
    """Stratified by the class with the most boxes in the image (coarse) and the set of classes present (fine)."""
    target = {"boxes": [[round(v, 2) for v in b] for b in boxes], "labels": [int(v) for v in labels]}
    if not labels:
        return Item(str(path.resolve()), target, NEGATIVE, group=NEGATIVE)
    counts = Counter(labels)
    main = classes[max(sorted(counts), key=lambda c: counts[c])]
    present = "+".join(classes[c] for c in sorted(counts))
    return Item(str(path.resolve()), target, present, group=main)


def _merge_small_groups(items: list[Item]) -> list[Item]:
    """Groups of fewer than 3 images (one per split part) join the largest group."""
    counts = Counter(it.keys[1] for it in items)
    largest = counts.most_common(1)[0][0]
    small = {g for g, n in counts.items() if n < 3}
    if not small or len(items) < 3:
        return items
    return [Item(it.path, it.target, it.stratum, group=largest) if it.keys[1] in small else it for it in items]


# --- Pascal VOC -----------------------------------------------------------------


def _voc(root: Path, opts: dict):
    import xml.etree.ElementTree as ET

    images, notes = _images(root / "images"), (root / "annotations")
    if not images:
        raise EdgetuneError(f"--data {root}: images/ holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    parsed, missing = [], 0
    for img in images:
        xml = (notes / img.relative_to(root / "images")).with_suffix(".xml")
        if not xml.is_file():
            missing += 1  # a negative written without an annotation file
            parsed.append((img, []))
            continue
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            parsed.append((img, BadAnnotation(f"{xml}: malformed XML ({e})")))
            continue
        objects = []
        for k, obj in enumerate(tree.iter("object")):
            name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
            try:
                if not name:
                    raise ValueError("no <name>")
                coords = [float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError) as e:
                objects = BadAnnotation(f"{xml}: object {k + 1} has no usable <name> and <bndbox> ({e})")
                break
            objects.append((name, coords, xml))
        parsed.append((img, objects))
    if missing:
        logger.warning("%d image(s) under %s have no annotation file: read as images without boxes.", missing, notes)
    classes = sorted({name for _, objs in parsed if isinstance(objs, list) for name, _, _ in objs})
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for img, objs in parsed:
        if isinstance(objs, BadAnnotation):
            rows.append((img, objs))
            continue
        try:
            size = _voc_size(objs[0][2]) if objs else None
            size = size or (_image_size(img) if objs else (0, 0))
            boxes = [check_box(c, size, f"{xml} ({name})") for name, c, xml in objs]
            rows.append((img, boxes, [index[name] for name, _, _ in objs]))
        except BadAnnotation as e:
            rows.append((img, e))
    return classes, rows, root.resolve()


def _voc_size(xml: Path) -> tuple[int, int] | None:
    import xml.etree.ElementTree as ET

    size = ET.parse(xml).getroot().find("size")
    try:
        w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    except (AttributeError, TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


# --- COCO JSON --------------------------------------------------------------------


def _coco(path: Path, opts: dict):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
        cats = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgetuneError(f"--data {path}: malformed JSON ({e}). Give a COCO instances file.") from None
    except (KeyError, TypeError, ValueError) as e:
        raise EdgetuneError(
            f"--data {path}: not a COCO instances file (missing or malformed {e}); it needs images, annotations and "
            "categories with ids and names."
        ) from None
    if not cats:
        raise EdgetuneError(f"--data {path}: its categories list is empty.")
    classes, index = [n for _, n in cats], {cid: i for i, (cid, _) in enumerate(cats)}
    folder = Path(opts["images"]) if opts.get("images") else None
    if folder is not None and not folder.is_dir():
        raise EdgetuneError(f"--images {folder}: no such folder (it should hold the images {path} lists).")
    by_id, files = {}, {}
    for im in images:
        try:
            by_id[im["id"]] = im
            files[im["id"]] = _coco_file(path, folder, str(im["file_name"]))
        except (KeyError, TypeError) as e:
            raise EdgetuneError(f"--data {path}: an image entry lacks {e}: {str(im)[:120]}") from None
    absent = [str(f) for f in files.values() if not f.is_file()]
    if absent:
        where = f"under --images {folder}" if folder else f"beside {path} or in {path.parent / 'images'}"
        raise EdgetuneError(
            f"--data {path}: {len(absent)} listed image(s) are not {where}: {', '.join(absent[:5])}"
            + (" ..." if len(absent) > 5 else "")
            + ". Pass --images FOLDER where they are."
        )
    boxes = {i: ([], []) for i in by_id}
    bad: dict = {}
    crowd = 0
    for k, a in enumerate(annotations):
        img = a.get("image_id")
        if img not in by_id:
            raise EdgetuneError(
                f"--data {path}: annotation {a.get('id', k)} names image_id {img}, not listed in images."
            )
        where = f"{path} (annotation {a.get('id', k)}, image {by_id[img].get('file_name')})"
        if a.get("iscrowd"):
            crowd += 1
            continue
        try:
            if a.get("category_id") not in index:
                raise BadAnnotation(f"{where}: unknown category_id {a.get('category_id')}")
            x, y, w, h = (float(v) for v in a["bbox"])
            size = (int(by_id[img].get("width") or 0), int(by_id[img].get("height") or 0))
            size = size if min(size) > 0 else _image_size(files[img])
            boxes[img][0].append(check_box([x, y, x + w, y + h], size, where))
            boxes[img][1].append(index[a["category_id"]])
        except BadAnnotation as e:
            bad.setdefault(img, e)
        except (KeyError, TypeError, ValueError) as e:
            bad.setdefault(img, BadAnnotation(f"{where}: no usable bbox ({e})"))
    if crowd:
        logger.warning(
            "Skipped %d crowd annotation(s) (iscrowd=1) of %s: a detector learns single objects.", crowd, path
        )
    rows = [(files[i], bad[i]) if i in bad else (files[i], *boxes[i]) for i in by_id]
    return classes, rows, (folder or path.parent).resolve()


def _coco_file(path: Path, folder: Path | None, name: str) -> Path:
    if folder is not None:
        return folder / name
    for candidate in (path.parent / name, path.parent / "images" / name):
        if candidate.is_file():
            return candidate
    return path.parent / name


# --- YOLO txt ----------------------------------------------------------------------


def yolo_classes(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    elif (root / "data.yaml").is_file():
        import yaml

        try:
            names = (yaml.safe_load((root / "data.yaml").read_text()) or {}).get("names")
        except yaml.YAMLError as e:
            raise EdgetuneError(f"--data {root}: data.yaml is not valid YAML ({e}).") from None
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=int)]
    else:
        names = None
    if not names:
        raise EdgetuneError(
            f"--data {root}: a YOLO folder needs its class names, one a line in classes.txt or as `names:` in "
            "data.yaml."
        )
    return [str(n) for n in names]


def _yolo(root: Path, opts: dict):
    classes = yolo_classes(root)
    images = _images(root / "images")
    if not images:
        raise EdgetuneError(f"--data {root}: images/ holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    rows = []
    for img in images:
        txt = (root / "labels" / img.relative_to(root / "images")).with_suffix(".txt")
        lines = [ln.split() for ln in txt.read_text().splitlines() if ln.strip()] if txt.is_file() else []
        try:
            size = _image_size(img) if lines else (0, 0)
            boxes, labels = [], []
            for n, parts in enumerate(lines, 1):
                try:
                    c, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
                    if len(parts) != 5:
                        raise ValueError(f"{len(parts)} fields")
                except (IndexError, ValueError) as e:
                    raise BadAnnotation(f"{txt}, line {n}: not 'class cx cy w h' ({e})") from None
                if not 0 <= c < len(classes):
                    raise BadAnnotation(f"{txt}, line {n}: class {c} is unknown ({len(classes)} classes named)")
                W, H = size
                box = [(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]
                boxes.append(check_box(box, size, f"{txt}, line {n}"))
                labels.append(c)
            rows.append((img, boxes, labels))
        except BadAnnotation as e:
            rows.append((img, e))
    return classes, rows, root.resolve()
