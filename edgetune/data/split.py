"""Seeded, stratified train/val/test split, saved with the run so that every later
stage and `evaluate` use exactly the same images."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.data.sources import Item, Source
from edgetune.errors import EdgetuneError
from edgetune.runtime.files import read_json, write_json

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    source: str
    classes: list[str]
    seed: int
    parts: dict[str, list[tuple[str, int]]]  # split name -> [(path, label)]
    skipped: list[str]
    soft: dict[str, list[float]] = field(default_factory=dict)  # path -> class probabilities, where the source has them

    def to_dict(self) -> dict:
        return {"source": self.source, "classes": self.classes, "seed": self.seed, "skipped": self.skipped,
                **{k: [list(x) for x in v] for k, v in self.parts.items()}, **({"soft": self.soft} if self.soft else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(d["source"], list(d["classes"]), int(d["seed"]), {k: [(p, int(y)) for p, y in d[k]] for k in SPLITS}, list(d.get("skipped", [])),
                   {p: [float(v) for v in t] for p, t in d.get("soft", {}).items()})

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Split":
        return cls.from_dict(read_json(path))

    def counts(self) -> dict[str, list[int]]:
        return {k: [sum(1 for _, y in v if y == c) for c in range(len(self.classes))] for k, v in self.parts.items()}


def _stratify_keys(items: list[Item]) -> list[str]:
    """The finest stratification every group of which has at least 3 members
    (one per split); falls back to the label alone."""
    keys = [f"{it.label}|{it.stratum}" for it in items]
    if min(Counter(keys).values()) >= 3:
        return keys
    return [str(it.label) for it in items]


def make_split(source: Source, seed: int, val_frac: float, test_frac: float) -> Split:
    from sklearn.model_selection import train_test_split

    if not (0 < test_frac < 1 and 0 < val_frac < 1 and val_frac + test_frac < 1):
        raise EdgetuneError(f"--val-frac {val_frac} and --test-frac {test_frac} must each be in (0, 1) and sum to less than 1.")
    items = source.items
    small = [source.classes[c] for c, n in Counter(it.label for it in items).items() if n < 3]
    if small:
        raise EdgetuneError(f"--data {source.spec}: class(es) {', '.join(small)} have fewer than 3 images; each of train, val and test needs one.")
    idx = list(range(len(items)))
    keys = _stratify_keys(items)
    rest, test = train_test_split(idx, test_size=test_frac, random_state=seed, stratify=keys)
    rest_keys = _stratify_keys([items[i] for i in rest])
    train, val = train_test_split(rest, test_size=val_frac / (1 - test_frac), random_state=seed, stratify=rest_keys)
    parts = {name: [(items[i].path, items[i].label) for i in sorted(part)] for name, part in zip(SPLITS, (train, val, test))}
    return Split(source.spec, source.classes, seed, parts, source.skipped, {it.path: list(it.soft) for it in items if it.soft is not None})
