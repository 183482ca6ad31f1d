"""Data sources of images with pixel masks: which class each pixel shows (0 is
background). Two layouts, told apart by the folder:

    images + masks   DATA/images/NAME.ext and DATA/masks/NAME.png (the same stem); a
                     mask pixel is a class index. Class names, background first, from
                     `classes` (given), else DATA/classes.txt (one a line), else
                     DATA/classes.yaml or data.yaml (`names:` a list or {index: name}).
    class folders    DATA/<FOLDER>/.../NAME.jpg with its mask NAME.png beside it (the
                     magnetic-tile layout, MT_<Class>/Imgs/); mask > 0 is that folder's
                     class. The defect-free folder (named by `background`, or whose
                     masks are all empty) is background throughout, masks or not.
                     Class names are the folder names less their shared prefix
                     (MT_Crack -> Crack).

Each Item's target is {"mask": the mask's path (None: all background), "class": the
class its pixels > 0 are (None: the pixels are class indices)}: `read_label` turns
it into a class-index array. Like image paths, mask paths are absolute in memory and
relative to the source's root in a run's split.json. The split keeps in proportion
the rarest class an image shows (its group) and the folder or class mix (its
stratum). Broken data is refused at once, every bad file named."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgetune.data.sources import IMAGE_SUFFIXES, Item, Source
from edgetune.errors import EdgetuneError

MASK_SUFFIX = ".png"
BACKGROUND = "background"
LISTED = 12  # problems named in one error


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _beside(image: Path) -> Path:
    return image.with_suffix(MASK_SUFFIX)


def _folder_images(folder: Path) -> list[Path]:
    """A class folder's images: every image file but the masks beside them (a .png
    whose stem an image of another suffix shares)."""
    files = _images_in(folder)
    stems = {(p.parent, p.stem) for p in files if p.suffix.lower() != MASK_SUFFIX}
    return [p for p in files if p.suffix.lower() != MASK_SUFFIX or (p.parent, p.stem) not in stems]


def _class_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def is_mask_source(spec: str) -> bool:
    """Does `spec` look like images with masks (the layout only, no mask read)?"""
    root = Path(spec)
    if not root.is_dir():
        return False
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return True
    for d in _class_folders(root):
        for p in _images_in(d):
            if p.suffix.lower() != MASK_SUFFIX and _beside(p).is_file():
                return True
    return False


def load_mask_source(spec: str, classes=None, background: str | None = None) -> Source:
    """`--data` with pixel masks (see the module's doc). `classes`: names, background
    first, as a list or a comma list (the images + masks layout); `background`: the
    defect-free folder (the class-folder layout)."""
    root = Path(spec)
    if not root.is_dir():
        raise EdgetuneError(
            f"--data {spec}: no such folder. Give a folder with images/ and masks/ (same file names), or one "
            "sub-folder per class holding each image's mask beside it (NAME.jpg + NAME.png)."
        )
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _paired(root, spec, _class_names(root, classes))
    if not is_mask_source(spec):
        raise EdgetuneError(
            f"--data {spec}: no masks found. Give a folder with images/ and masks/ (same file names), or one "
            "sub-folder per class holding each image's mask beside it (NAME.jpg + NAME.png)."
        )
    return _folders(root, spec, background)


# --- reading a mask ------------------------------------------------------------


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as a 2-D integer array (a 3-channel grey PNG: its first channel)."""
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise EdgetuneError(f"Mask {path}: not a readable image. Fix or replace it.")
    return m[..., 0] if m.ndim == 3 else m


def read_label(target: dict, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) uint8 class-index array of an image of `shape` from its target."""
    h, w = int(shape[0]), int(shape[1])
    path, cls = target.get("mask"), target.get("class")
    if path is None:
        return np.full((h, w), cls or 0, np.uint8)
    m = read_mask(path)
    if m.shape != (h, w):
        raise EdgetuneError(
            f"Mask {path} is {m.shape[1]}x{m.shape[0]} px but its image is {w}x{h}. A mask must have its image's size."
        )
    return _class_indices(m, cls)


def _class_indices(mask: np.ndarray, cls) -> np.ndarray:
    """A mask file's values as class indices: a binary mask (a `class` target) marks that class."""
    return ((mask > 0) * int(cls)).astype(np.uint8) if cls is not None else mask.astype(np.uint8)


def classes_present(target: dict) -> set[int]:
    """The class indices an image's mask shows (0, background, included), from the
    mask file alone."""
    path, cls = target.get("mask"), target.get("class")
    if path is None:
        return {int(cls or 0)}
    return {int(v) for v in np.unique(_class_indices(read_mask(path), cls))}


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header, None if unreadable (named by the image check)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - PIL raises many types; the image check names the file
        return None


# --- class names -----------------------------------------------------------------


def _class_names(root: Path, given) -> list[str] | None:
    """Names given, else from classes.txt / classes.yaml / data.yaml; None: not named."""
    if given:
        names = [c.strip() for c in given.split(",")] if isinstance(given, str) else [str(c) for c in given]
        return _checked_names(names, "--classes")
    if (root / "classes.txt").is_file():
        lines = (root / "classes.txt").read_text(encoding="utf-8").splitlines()
        return _checked_names([c.strip() for c in lines if c.strip()], str(root / "classes.txt"))
    for name in ("classes.yaml", "classes.yml", "data.yaml", "data.yml"):
        if (root / name).is_file():
            from edgetune.runtime.files import read_yaml

            names = read_yaml(root / name, "class names").get("names")
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names, key=int)]
            if not isinstance(names, list):
                raise EdgetuneError(
                    f"{root / name}: no `names:` list of class names (background first), e.g. names: [background, "
                    "crack]."
                )
            return _checked_names([str(n) for n in names], str(root / name))
    return None


def _checked_names(names: list[str], where: str) -> list[str]:
    dup = [n for n, k in Counter(names).items() if k > 1]
    if len(names) < 2 or dup or not all(names):
        raise EdgetuneError(
            f"{where}: class names {names} must be at least two distinct non-empty names, background first (mask value "
            "0), e.g. background,crack,blowhole."
        )
    return names


# --- the two layouts ---------------------------------------------------------------


def _paired(root: Path, spec: str, classes: list[str] | None) -> Source:
    images = _images_in(root / "images")
    if not images:
        raise EdgetuneError(f"--data {spec}: images/ holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    masks = {p.stem: p for p in _images_in(root / "masks")}
    problems, rows = [], []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            problems.append(f"{image}: no mask (expected masks/{image.stem}{MASK_SUFFIX})")
            continue
        m, why = _checked_mask(image, mask)
        if why:
            problems.append(why)
            continue
        rows.append((image, mask, np.unique(m)))
    largest = max((int(v[-1]) for _, _, v in rows), default=0)
    if classes is None:
        classes = (
            [BACKGROUND, "defect"] if largest <= 1 else [BACKGROUND] + [f"class{k}" for k in range(1, largest + 1)]
        )
        from edgetune import log

        log.get(__name__).warning(
            "--data %s names no classes (classes.txt, data.yaml or --classes): calling them %s.", spec, classes
        )
    for image, mask, values in rows:
        if int(values[-1]) >= len(classes):
            bad = [int(v) for v in values if v >= len(classes)]
            problems.append(
                f"{mask}: value(s) {bad[:5]} outside the {len(classes)} classes (0..{len(classes) - 1}: "
                f"{', '.join(classes)})" + (" - a 0/255 mask? save class indices" if 255 in bad else "")
            )
    _refuse(spec, problems, "a mask is a PNG of its image's size whose pixels are class indices (0: background)")
    present = [[int(v) for v in values if v > 0] for _, _, values in rows]
    items = _items(
        [str(image.resolve()) for image, _, _ in rows],
        [{"mask": str(mask.resolve()), "class": None} for _, mask, _ in rows],
        present,
        ["+".join(classes[k] for k in p) or classes[0] for p in present],
        classes,
    )
    return Source(spec, classes, items, root=str(root.resolve()))


def _folders(root: Path, spec: str, background: str | None) -> Source:
    folders = [d for d in _class_folders(root) if _folder_images(d)]
    names = _class_names_of(folders)
    if background is not None and background not in names and background not in [d.name for d in folders]:
        raise EdgetuneError(
            f"--background {background}: no such folder in {spec}. Its folders: {', '.join(d.name for d in folders)}."
        )
    problems, per_folder = [], []
    for d in folders:
        named = background in (d.name, names[d.name])
        images, found = _folder_images(d), []
        for image in images:
            mask = _beside(image)
            if named:
                found.append((image, None, False))
            elif not mask.is_file():
                problems.append(f"{image}: no mask (expected {mask.name} beside it)")
            else:
                m, why = _checked_mask(image, mask)
                problems += [why] if why else []
                found.append((image, mask, m is not None and bool((m > 0).any())))
        empty = not named and found and not any(has for _, _, has in found) and len(found) == len(images)
        per_folder.append((d, named or empty, found))
    hint = " (a defect-free folder without masks? name it with --background FOLDER)"
    _refuse(spec, problems, "each image needs NAME.png beside it, of its size; mask > 0 is the folder's class" + hint)
    classes = [BACKGROUND] + [names[d.name] for d, free, _ in per_folder if not free]
    if len(classes) < 2:
        raise EdgetuneError(
            f"--data {spec}: every folder is defect-free (no mask pixel > 0): there is nothing to segment."
        )
    paths, targets, present, strata = [], [], [], []
    for d, free, found in per_folder:
        k = 0 if free else classes.index(names[d.name])
        for image, mask, has in found:
            paths.append(str(image.resolve()))
            targets.append({"mask": None if free else str(mask.resolve()), "class": k})
            present.append([k] if has and k else [])
            strata.append(d.name)
    return Source(spec, classes, _items(paths, targets, present, strata, classes), root=str(root.resolve()))


def _class_names_of(folders: list[Path]) -> dict[str, str]:
    """Folder name -> class name: the folders' shared prefix up to its last '_' dropped (MT_Crack -> Crack)."""
    import os

    common = os.path.commonprefix([d.name for d in folders]) if len(folders) > 1 else ""
    cut = common.rfind("_") + 1
    return {d.name: d.name[cut:] or d.name for d in folders}


def _checked_mask(image: Path, mask: Path) -> tuple[np.ndarray | None, str | None]:
    """The mask and why it cannot serve its image (None when it can)."""
    try:
        m = read_mask(mask)
    except EdgetuneError:
        return None, f"{mask}: not a readable image"
    size = _image_size(image)
    if size is not None and m.shape != size:
        return m, f"{mask} is {m.shape[1]}x{m.shape[0]} px but its image {image.name} is {size[1]}x{size[0]}"
    return m, None


def _refuse(spec: str, problems: list[str], rule: str) -> None:
    if problems:
        more = f"; and {len(problems) - LISTED} more" if len(problems) > LISTED else ""
        raise EdgetuneError(
            f"--data {spec}: {len(problems)} mask problem(s): {'; '.join(problems[:LISTED])}{more}. Fix them: {rule}."
        )


def _items(paths, targets, present, strata, classes) -> list[Item]:
    """Items grouped by the rarest class each image shows (background when none)."""
    counts = Counter(k for p in present for k in p)
    items = []
    for path, target, p, stratum in zip(paths, targets, present, strata):
        group = classes[min(p, key=lambda k: (counts[k], k))] if p else classes[0]
        items.append(Item(path, target, stratum, group=group))
    return items
