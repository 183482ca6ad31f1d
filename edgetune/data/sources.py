"""Data sources for `--data`. Each gives the same thing: image paths, each with its
target (what the source says of the image) and the groups the split keeps in
proportion. The class-label sources are here: a folder of class sub-folders, a
`path,label` CSV, or the built-in ELPV solar-cell set (targets: class indices).
Tasks that need other targets (boxes, masks) bring their own readers."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Keys of a dict target that name files of its own (a mask): like image paths, absolute
# in memory and relative to the source's root in a run's split.json.
TARGET_FILES = ("mask",)


@dataclass(frozen=True)
class Item:
    path: str
    target: Any  # JSON-ready: a class index here; a task's own readers give boxes, a mask's path, ...
    stratum: str  # a finer group within `group` the split also keeps in proportion (e.g. ELPV's module type)
    soft: tuple[float, ...] | None = None  # class probabilities, where the labels came from them
    group: str | None = None  # the coarse group the split keeps in proportion; None: the target (a class index)

    @property
    def keys(self) -> tuple[str, str]:
        """Stratification keys, finest first."""
        group = str(self.target) if self.group is None else self.group
        return f"{group}|{self.stratum}", group


@dataclass
class Source:
    spec: str
    classes: list[str]
    items: list[Item]
    skipped: list[str] = field(default_factory=list)
    root: str | None = None  # the folder the items' paths are under (a run's split.json stores them relative to it)

    def group_name(self, group: str) -> str:
        """A group as people read it: a class index's class name."""
        return self.classes[int(group)] if group.isdigit() and int(group) < len(self.classes) else group


def source_root(spec: str) -> Path | None:
    """Where source `spec` keeps its images on this machine, without listing them:
    ELPV's data folder in this Python's elpv-dataset package, a folder source itself,
    a CSV's folder; None where it is not here."""
    if spec.split(":")[0] == "elpv":
        try:
            import elpv_dataset
        except ImportError:
            return None
        return Path(elpv_dataset.__file__).parent / "data"
    path = Path(spec)
    if path.is_file():
        return path.parent.resolve()
    return path.resolve() if path.is_dir() else None


def load_source(spec: str, min_classes: int = 2) -> Source:
    """Resolve `--data` with class labels: `elpv`, `elpv:4class`, a folder, or a CSV file."""
    if spec.split(":")[0] == "elpv":
        return _elpv(spec)
    path = Path(spec)
    if not path.exists():
        raise EdgetuneError(
            f"--data {spec}: no such file or folder. Give a folder with one sub-folder per class, a CSV file with "
            "columns path,label, or 'elpv'."
        )
    source = _csv(path) if path.is_file() else _folder(path)
    if len(source.classes) < min_classes:
        found = source.classes[0] if source.classes else "none"
        raise EdgetuneError(
            f"--data {source.spec}: only one class ({found}) was found; telling classes apart needs at least "
            f"{min_classes}."
        )
    return source


def is_class_source(spec: str) -> bool:
    """Does `spec` look like a class-label source (without reading every image)?"""
    if spec.split(":")[0] == "elpv":
        return True
    path = Path(spec)
    if path.is_file():
        return path.suffix.lower() == ".csv"
    folders = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")] if path.is_dir() else []
    return bool(folders) and all(any(_images(d)) for d in folders)


def _images(folder: Path):
    return (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(spec: str) -> bool:
    """A plain folder of images (no class sub-folders): images of one kind."""
    path = Path(spec)
    return (
        path.is_dir()
        and not is_class_source(spec)
        and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    )


def image_folder_source(spec: str, name: str) -> Source:
    """Every image of a plain folder (sub-folders searched too), as the one class `name`."""
    root = Path(spec)
    files = sorted(_images(root))
    if not files:
        raise EdgetuneError(f"--data {spec}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return Source(spec, [name], [Item(str(f.resolve()), 0, name) for f in files], root=str(root.resolve()))


def _folder(root: Path) -> Source:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise EdgetuneError(
            f"--data {root}: the folder has no class sub-folders. Put each class's images in a sub-folder named after "
            "the class."
        )
    classes = [d.name for d in class_dirs]
    items = []
    for label, d in enumerate(class_dirs):
        files = sorted(_images(d))
        if not files:
            raise EdgetuneError(
                f"--data {root}: class folder '{d.name}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). Add "
                "images or remove the folder."
            )
        items += [Item(str(f.resolve()), label, d.name) for f in files]
    return Source(str(root), classes, items, root=str(root.resolve()))


def _csv(path: Path) -> Source:
    if path.suffix.lower() != ".csv":
        raise EdgetuneError(f"--data {path}: a file source must be a .csv with columns path,label.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= {c.strip() for c in reader.fieldnames}:
            raise EdgetuneError(
                f"--data {path}: the CSV needs a header with columns path,label (found: {reader.fieldnames})."
            )
        rows = [(r["path"].strip(), r["label"].strip()) for r in reader]
    if not rows:
        raise EdgetuneError(f"--data {path}: the CSV has no rows.")
    missing = [p for p, _ in rows if not (path.parent / p).is_file()]
    if missing:
        raise EdgetuneError(
            f"--data {path}: {len(missing)} listed image(s) do not exist (paths are relative to the CSV file): "
            f"{', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
        )
    classes = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    items = [Item(str((path.parent / p).resolve()), index[label], label) for p, label in rows]
    return Source(str(path), classes, items, root=str(path.parent.resolve()))


def _elpv(spec: str) -> Source:
    task = spec.split(":", 1)[1] if ":" in spec else "binary"
    if task not in ("binary", "4class"):
        raise EdgetuneError(
            f"--data {spec}: unknown ELPV task '{task}'. Use 'elpv' (binary: defective when p >= 0.5) or 'elpv:4class'."
        )
    try:
        import elpv_dataset  # noqa: F401 - only whether it is installed
    except ImportError:
        raise EdgetuneError("--data elpv needs the elpv-dataset package: pip install 'edgetune[train]'.") from None
    root = source_root(spec)
    items = []
    levels = {0.0: 0, 1 / 3: 1, 2 / 3: 2, 1.0: 3}
    for line in (root / "labels.csv").read_text().split("\n"):
        if not line.strip():
            continue
        rel, prob, kind = line.split()
        p = float(prob)
        level = min(levels, key=lambda v: abs(v - p))
        label = int(p >= 0.5) if task == "binary" else levels[level]
        # Stratify by defect probability and module type, as Deitsch et al. 2019.
        items.append(
            Item(
                str(root / rel),
                label,
                f"p{levels[level]}-{kind}",
                soft=(1 - level, level) if task == "binary" else None,
            )
        )
    classes = ["ok", "defective"] if task == "binary" else ["p0", "p1/3", "p2/3", "p1"]
    return Source(spec, classes, items, root=str(root))
