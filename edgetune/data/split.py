"""Seeded, stratified train/val/test split, saved with the run so that every later
stage and `evaluate` use exactly the same images.

split.json stores each image's path relative to its data source's root (the folder,
the CSV's folder, ELPV's folder inside the elpv-dataset package), with the source
spec; loading resolves them against where that source is on this machine. So a run
copied to another machine, or used from another virtualenv, finds its images there.
Older split.json files with absolute paths load as they are."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.data.sources import TARGET_FILES, Item, Source, source_root
from edgetune.errors import EdgetuneError
from edgetune.runtime.files import read_json, write_json

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    source: str
    classes: list[str]
    seed: int
    parts: dict[str, list[tuple[str, Any]]]  # split name -> [(path, target)]; targets as the source gave them (JSON)
    skipped: list[str]
    soft: dict[str, list[float]] = field(default_factory=dict)  # path -> class probabilities, where the source has them
    root: str | None = None  # the source's root where the images were found (in memory, paths are absolute)

    def to_dict(self) -> dict:
        """The split.json record: paths relative to `root` (portable), `root` itself for reference."""
        rel = self._relative
        return {
            "source": self.source,
            "root": self.root,
            "paths": "relative" if self.root else "absolute",
            "classes": self.classes,
            "seed": self.seed,
            "skipped": [rel(p) for p in self.skipped],
            **{k: [[rel(p), target_files(y, rel)] for p, y in v] for k, v in self.parts.items()},
            **({"soft": {rel(p): t for p, t in self.soft.items()}} if self.soft else {}),
        }

    def _relative(self, path: str) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix() if self.root else path

    @classmethod
    def from_dict(cls, d: dict, data: str | None = None) -> "Split":
        """`data`: where the source is on this machine, when not where its spec (or the
        recorded root) points from here."""
        root = resolve_root(d, data) if d.get("paths") == "relative" else None

        def here(p):
            return str(root / p) if root is not None else p

        return cls(
            d["source"],
            list(d["classes"]),
            int(d["seed"]),
            {k: [(here(p), target_files(y, here)) for p, y in d[k]] for k in SPLITS},
            [here(p) for p in d.get("skipped", [])],
            {here(p): [float(v) for v in t] for p, t in d.get("soft", {}).items()},
            str(root) if root is not None else d.get("root"),
        )

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path, data: str | None = None) -> "Split":
        return cls.from_dict(read_json(path), data)

    def paths(self, part: str) -> list[str]:
        return [p for p, _ in self.parts[part]]


def target_files(target: Any, move) -> Any:
    """A target with its own files (a mask: `TARGET_FILES`) with `move` applied to
    their paths, as to image paths: relative in split.json, absolute in memory."""
    if not isinstance(target, dict) or not any(isinstance(target.get(k), str) for k in TARGET_FILES):
        return target
    return {k: move(v) if k in TARGET_FILES and isinstance(v, str) else v for k, v in target.items()}


def resolve_root(d: dict, data: str | None = None) -> Path:
    """The root a relative split.json resolves against: the first of `data`, the
    recorded source spec and the recorded root that holds the split's first image
    (else the first that exists, else the recorded root: the missing file is then
    named when it is read)."""
    first = next((p for k in SPLITS for p, _ in d.get(k, [])), None)
    candidates = [source_root(s) for s in (data, d["source"]) if s] + ([Path(d["root"])] if d.get("root") else [])
    candidates = [c for c in candidates if c is not None]
    for c in candidates:
        if first is None or (c / first).is_file():
            return c
    existing = [c for c in candidates if c.is_dir()]
    if existing:
        return existing[0]
    return candidates[0] if candidates else Path(".")


def _stratify_keys(items: list[Item]) -> list[str]:
    """The finest stratification every group of which has at least 3 members
    (one per split); falls back to the coarse group alone."""
    keys = [it.keys[0] for it in items]
    if min(Counter(keys).values()) >= 3:
        return keys
    return [it.keys[1] for it in items]


def make_split(source: Source, seed: int, val_frac: float, test_frac: float) -> Split:
    from sklearn.model_selection import train_test_split

    if not (0 < test_frac < 1 and 0 < val_frac < 1 and val_frac + test_frac < 1):
        raise EdgetuneError(
            f"--val-frac {val_frac} and --test-frac {test_frac} must each be in (0, 1) and sum to less than 1."
        )
    items = source.items
    small = [source.group_name(g) for g, n in Counter(it.keys[1] for it in items).items() if n < 3]
    if small:
        raise EdgetuneError(
            f"--data {source.spec}: class(es) {', '.join(small)} have fewer than 3 images; each of train, val and test "
            "needs one."
        )
    idx = list(range(len(items)))
    keys = _stratify_keys(items)
    rest, test = train_test_split(idx, test_size=test_frac, random_state=seed, stratify=keys)
    rest_keys = _stratify_keys([items[i] for i in rest])
    train, val = train_test_split(rest, test_size=val_frac / (1 - test_frac), random_state=seed, stratify=rest_keys)
    parts = {
        name: [(items[i].path, items[i].target) for i in sorted(part)] for name, part in zip(SPLITS, (train, val, test))
    }
    return Split(
        source.spec,
        source.classes,
        seed,
        parts,
        source.skipped,
        {it.path: list(it.soft) for it in items if it.soft is not None},
        source.root,
    )
