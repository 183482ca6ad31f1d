"""Calibration recipes (`calibration/*.yaml`): which images initialise the INT8
quantizers. The selection is seeded and recorded image by image."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgetune import log
from edgetune.data.split import Split
from edgetune.errors import EdgetuneError
from edgetune.resources import data_dir
from edgetune.runtime.files import read_yaml, sha256_file, sha256_json

logger = log.get(__name__)
KEYS = {"count", "split", "strategy", "seed"}


@dataclass(frozen=True)
class Recipe:
    name: str
    count: int = 300
    split: str = "train"
    strategy: str = "stratified"
    seed: int = 0


def recipe_dir() -> Path:
    return data_dir("edgetune.recipes", "calibration")


def load_recipe(name_or_path: str) -> Recipe:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = recipe_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in recipe_dir().glob("*.yaml"))
        raise EdgetuneError(
            f"--calibration {name_or_path}: no such recipe ({path}). Give a YAML file or one of: "
            f"{', '.join(known) or 'none'}."
        )
    data = read_yaml(path, "Calibration recipe")
    if set(data) - KEYS:
        raise EdgetuneError(
            f"Calibration recipe {path}: unknown key(s) {sorted(set(data) - KEYS)}; allowed: {', '.join(sorted(KEYS))}."
        )
    r = Recipe(name=path.stem, **data)
    if not isinstance(r.count, int) or r.count < 1:
        raise EdgetuneError(f"Calibration recipe {path}: count {r.count!r} must be a positive integer.")
    if r.split not in ("train", "val"):
        raise EdgetuneError(
            f"Calibration recipe {path}: split {r.split!r} must be train or val (the test split stays unseen)."
        )
    if r.strategy not in ("stratified", "random"):
        raise EdgetuneError(f"Calibration recipe {path}: strategy {r.strategy!r} must be stratified or random.")
    return r


def select(split: Split, recipe: Recipe, count: int | None = None) -> tuple[list[tuple[str, int]], dict]:
    """The calibration images and their record (recipe, counts, image list, hash).
    A pool smaller than asked is used whole, with a warning and the shortfall recorded."""
    import numpy as np

    pool = split.parts[recipe.split]
    want = count or recipe.count
    if len(pool) <= want:
        if len(pool) < want:
            logger.warning(
                "Calibration recipe '%s' asks for %d images but the %s split has %d: using all of them.",
                recipe.name,
                want,
                recipe.split,
                len(pool),
            )
        chosen = list(pool)
    elif (
        recipe.strategy == "stratified"
        and all(isinstance(y, int) for _, y in pool)  # class labels; other targets (masks, boxes) draw at random
        and len({y for _, y in pool}) > 1
        and want >= len({y for _, y in pool})
    ):
        from sklearn.model_selection import train_test_split

        chosen, _ = train_test_split(pool, train_size=want, random_state=recipe.seed, stratify=[y for _, y in pool])
    else:
        idx = np.random.default_rng(recipe.seed).permutation(len(pool))[:want]
        chosen = [pool[i] for i in sorted(idx)]
    chosen = sorted(chosen, key=lambda pair: pair[0])
    images = [[p, y, sha256_file(p)] for p, y in chosen]
    record = {
        "recipe": {**asdict(recipe), "count": want},
        "requested": want,
        "count": len(chosen),
        "short": max(0, want - len(chosen)),
        "hash": sha256_json(images),
        "images": [[p, y] for p, y, _ in images],
    }
    return [(p, y) for p, y in chosen], record
