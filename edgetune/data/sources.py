"""Data sources for `--data`: a folder of class sub-folders, a `path,label` CSV, or
the built-in ELPV solar-cell set. Each gives the same thing: labelled image paths
plus a stratification key."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.errors import EdgetuneError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Item:
    path: str
    label: int
    stratum: str  # what the split stratifies on (class, plus e.g. ELPV's module type)
    soft: tuple[float, ...] | None = None  # class probabilities, where the labels came from them


@dataclass
class Source:
    spec: str
    classes: list[str]
    items: list[Item]
    skipped: list[str] = field(default_factory=list)
    root: str | None = None  # the folder the items' paths are under (a run's split.json stores them relative to it)


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


def load_source(spec: str) -> Source:
    """Resolve `--data`: `elpv`, `elpv:4class`, a folder, or a CSV file."""
    if spec.split(":")[0] == "elpv":
        return _elpv(spec)
    path = Path(spec)
    if not path.exists():
        raise EdgetuneError(
            f"--data {spec}: no such file or folder. Give a folder with one sub-folder per class, a CSV file with columns path,label, or 'elpv'."
        )
    source = _csv(path) if path.is_file() else _folder(path)
    _check_classes(source)
    return source


def _folder(root: Path) -> Source:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise EdgetuneError(
            f"--data {root}: the folder has no class sub-folders. Put each class's images in a sub-folder named after the class."
        )
    classes = [d.name for d in class_dirs]
    items = []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EdgetuneError(
                f"--data {root}: class folder '{d.name}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). Add images or remove the folder."
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
            f"--data {path}: {len(missing)} listed image(s) do not exist (paths are relative to the CSV file): {', '.join(missing[:20])}"
            + (" ..." if len(missing) > 20 else "")
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


def _check_classes(source: Source) -> None:
    if len(source.classes) < 2:
        raise EdgetuneError(
            f"--data {source.spec}: only one class ({source.classes[0] if source.classes else 'none'}) was found; a classifier needs at least two."
        )
