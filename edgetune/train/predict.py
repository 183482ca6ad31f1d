"""A model's predictions over a loader, through its task's hooks: what
validation, evaluation and the latency planner read. Under torchrun every rank
predicts its share of the images and every rank receives all of them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from edgetune.data.dataset import make_loader
from edgetune.train import distributed
from edgetune.train.hooks import TrainHooks, join, take

# Training and validation run in channels_last (NHWC): on a 2-core AVX2 CPU a training
# step of efficientnet_lite0 at 300 px took 3.1 s instead of 5.4 s; the results are the
# same. Models are handed back in the default layout, so what callers save or export
# does not change.
NHWC = torch.channels_last


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=NHWC) if x.dim() == 4 else x


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | None = None,
    hooks: TrainHooks | None = None,
    local: bool = False,
):
    """(predictions, targets) over a loader, in eval mode: `hooks.predict` of each
    batch (by default the model's output, e.g. logits, as an array), joined. Under
    torchrun every rank predicts its share of the images and receives all of them,
    in loader order: every rank must call it. `local`: this process predicts every
    image alone (work that one rank does for all)."""
    hooks = hooks or TrainHooks()
    device = device or next(model.parameters()).device
    world = 1 if local else distributed.world_size()
    if world > 1:
        mine = range(distributed.rank(), len(loader.dataset), world)
        loader = make_loader(
            Subset(loader.dataset, mine), loader.batch_size, loader.num_workers, collate_fn=loader.collate_fn
        )
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    for x, y in loader:
        outputs.append(hooks.predict(model, nhwc(x.to(device)), to_device(y, device)))
        targets.append(y)
    model.train(was_training)
    if world > 1:
        shares = [s for s in distributed.all_gather((list(mine), outputs, targets)) if s[1]]
        if shares:
            order = np.argsort(np.concatenate([s[0] for s in shares]))
            outputs = [take(join([o for s in shares for o in s[1]]), order)]
            targets = [take(join([t for s in shares for t in s[2]]), order)]
        else:
            outputs, targets = [], []
    if not outputs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return join(outputs), join(targets)


def to_device(y, device: torch.device):
    """A batch's targets on the device: a tensor, or the tensors of a list of dicts
    (one per image, as detection gives them)."""
    if isinstance(y, torch.Tensor):
        return y.to(device, non_blocking=True)
    if isinstance(y, list):
        return [
            {k: to_device(v, device) for k, v in t.items()} if isinstance(t, dict) else to_device(t, device) for t in y
        ]
    return y
