"""A torch Dataset over (path, label) pairs, and the loaders the training loop uses."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from edgetune import log
from edgetune.data.transforms import load_rgb


class ImageDataset(Dataset):
    """Yields (image, label), or (image, class probabilities) when `soft` maps paths
    to them (for the loss; metrics always use the hard labels)."""

    def __init__(
        self,
        pairs: list[tuple[str, int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        soft: dict[str, list[float]] | None = None,
    ):
        self.pairs, self.transform, self.soft = pairs, transform, soft

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        path, label = self.pairs[i]
        x = self.transform(load_rgb(path))
        if self.soft is None:
            return x, label
        return x, torch.tensor(self.soft[path], dtype=torch.float32)

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.pairs]


def train_val_datasets(split, spec, augment, soft_labels: bool) -> tuple[ImageDataset, ImageDataset]:
    """What the training loop trains and validates on; with `soft_labels`, the
    training targets are the source's label probabilities where it has them."""
    from edgetune.data.transforms import EvalTransform, TrainTransform

    soft = None
    if soft_labels and split.soft:
        n = len(split.classes)
        soft = {p: split.soft.get(p) or [float(c == y) for c in range(n)] for p, y in split.parts["train"]}
    elif soft_labels:
        log.get(__name__).warning(
            "--soft-labels: %s has no label probabilities (only the built-in ELPV has); training on the hard labels.",
            split.source,
        )
    return (
        ImageDataset(split.parts["train"], TrainTransform(spec, augment), soft),
        ImageDataset(split.parts["val"], EvalTransform(spec)),
    )


class _Loader(DataLoader):
    """Workers forked from a parent without OpenCV's thread pool: a pool alive at
    fork hangs the worker's first OpenCV call (even setNumThreads waits forever on
    the dead pool's condition variable; seen when QAT with --workers 1 forked after
    the calibration images were resized). The parent runs OpenCV on one thread
    while its workers start, then gets its threads back."""

    def _get_iterator(self):
        if not self.num_workers:
            return super()._get_iterator()
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return super()._get_iterator()
        finally:
            cv2.setNumThreads(threads)


def make_loader(dataset, batch_size: int, workers: int = 0, **kw) -> DataLoader:
    """Every DataLoader of training and evaluation: its worker processes run OpenCV
    (the preprocessing) with one thread each, as the workers are the parallelism
    and a thread pool inherited across fork is a known way to hang."""
    return _Loader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=_one_opencv_thread if workers else None,
        **kw,
    )


def _one_opencv_thread(_worker: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def eval_loader(pairs, transform, batch_size: int, workers: int = 0) -> DataLoader:
    return make_loader(ImageDataset(pairs, transform), batch_size, workers, shuffle=False)
