"""A torch Dataset over (path, label) pairs, and the loaders the training loop uses."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from edgetune.data.transforms import load_rgb


class ImageDataset(Dataset):
    def __init__(self, pairs: list[tuple[str, int]], transform: Callable[[torch.Tensor], torch.Tensor]):
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        path, label = self.pairs[i]
        return self.transform(load_rgb(path)), label

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.pairs]


def eval_loader(pairs, transform, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(ImageDataset(pairs, transform), batch_size=batch_size, shuffle=False, num_workers=workers)
