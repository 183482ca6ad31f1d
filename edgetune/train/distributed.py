"""Running under `torchrun`: one process per device, torch's own process group.

torchrun starts the processes and tells each its place in RANK, WORLD_SIZE and
LOCAL_RANK (with MASTER_ADDR/MASTER_PORT of the rendezvous store). `setup` joins
the group: NCCL with one GPU per local rank on CUDA, gloo on CPU. Rank 0 is the
main process: it alone logs, shows progress and writes run files; what it decides
from files (the split, a checkpoint to resume) reaches the others by broadcast, so
the output directory need not be shared between machines.

Without torchrun every function here is a no-op for a single process."""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from edgetune.errors import EdgetuneError
from edgetune.torchrun import is_main, launched, local_rank, rank  # noqa: F401 - the package's view of torchrun, with the functions below

T = TypeVar("T")
# How long joining the group, and any one collective, may wait for the other
# processes: a rendezvous endpoint nobody answers fails with its address after
# this, instead of hanging. Minutes by default: a slow rank (data loading on a
# busy node, NNCF compiling its kernels) must not be taken for a dead one.
TIMEOUT_ENV = "EDGETUNE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
_left = False  # the group was closed by `leave`; this process continues alone


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def timeout_s() -> int:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = int(value)
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise EdgetuneError(
            f"{TIMEOUT_ENV}={value!r}: give the seconds a rank may wait for the others (e.g. 600)."
        ) from None
    return seconds


def device_for(name: str = "auto") -> torch.device:
    """The torch device of this process for `--device NAME`: under torchrun a
    CUDA device is the local rank's GPU (`cuda` and `auto` alike)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EdgetuneError(f"--device {name!r}: use auto, cpu, cuda or cuda:N (mps where PyTorch has it).") from None
    if (
        device.type == "cuda" and not launched() and not torch.cuda.is_available()
    ):  # under torchrun: the rank's own message below
        raise EdgetuneError(
            f"--device {name}: this PyTorch sees no CUDA GPU ({torch.__version__}). Use --device cpu, or auto."
        )
    if device.type != "cuda" or not launched():
        return device
    local, count = local_rank(), torch.cuda.device_count()
    if device.index is not None:
        raise EdgetuneError(
            f"--device {name}: under torchrun each process takes the GPU of its local rank; pass --device cuda (or "
            "auto), and choose GPUs with CUDA_VISIBLE_DEVICES."
        )
    if local >= count:
        raise EdgetuneError(
            f"--device {name} under torchrun: this process is local rank {local} of "
            f"{os.environ.get('LOCAL_WORLD_SIZE', '?')} on this machine, but it has {count} GPU(s). Start at most "
            f"{count} processes per machine (torchrun --nproc-per-node {max(count, 1)}), or train on the CPU with "
            "--device cpu."
        )
    return torch.device("cuda", local)


def setup(device: str = "auto") -> torch.device:
    """Join torchrun's process group (once per process) and return this process's
    device. Outside torchrun: just the device."""
    dev = device_for(device)
    if not launched() or active() or _left:
        return dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s()), device_id=dev if dev.type == "cuda" else None
        )
    except Exception as e:  # DistStoreError, RuntimeError, TimeoutError: all mean "could not join"
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise EdgetuneError(
            f"Rank {rank()} could not join the process group at {where} (MASTER_ADDR:MASTER_PORT from torchrun) within "
            f"{timeout_s()} s: {first}. Check that every node's torchrun has the same --rdzv-endpoint, that it is "
            f"reachable from this machine, and that the other nodes were started (--nnodes)."
        ) from None
    atexit.register(_close)
    return dev


def _close() -> None:
    if active():
        dist.destroy_process_group()


def leave() -> bool:
    """Wait for every rank, then close the group: what follows runs in this process
    alone. True in the main process (which carries on), False in the others."""
    global _left
    if active():
        barrier()
        dist.destroy_process_group()
        _left = True
    return is_main()


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run by the main process only, its result handed to every rank. An
    EdgetuneError raised there is raised on every rank (each exits with the same
    message instead of waiting for a result that never comes)."""
    if not active():
        return fn()
    box: list[Any] = [None]
    failed: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as e:
            failed = e
            box[0] = ("error", str(e) if isinstance(e, EdgetuneError) else f"rank 0 failed: {type(e).__name__}: {e}")
    dist.broadcast_object_list(box, src=0)
    if failed is not None:
        raise failed
    status, value = box[0]
    if status == "error":
        raise EdgetuneError(value)
    return value


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the ranks (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (picklable objects)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's `module` (same architecture)."""
    if not active():
        return
    device = collective_device()
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, torch.Tensor):
                on = t if t.device.type == device.type else t.to(device)
                dist.broadcast(on, src=0)
                if on is not t:
                    t.copy_(on)


def fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if isinstance(t, torch.Tensor):
            h.update(name.encode())
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same(module: torch.nn.Module, what: str) -> None:
    """Fail on every rank unless `module` holds the same values everywhere."""
    prints = all_gather(fingerprint(module))
    if len(set(prints)) > 1:
        differ = [r for r, p in enumerate(prints) if p != prints[0]]
        raise EdgetuneError(
            f"{what} differs between ranks (ranks {differ} differ from rank 0). This is a bug in edgetune's "
            "distributed training; please report it with the command line."
        )


def batch_record(batch_size: int) -> dict:
    """What run.json records of a training stage's scale-out."""
    world = world_size()
    return {
        "world_size": world,
        "batch_size_per_rank": batch_size,
        "global_batch_size": batch_size * world,
        "backend": dist.get_backend() if active() else None,
    }


def collective_device() -> torch.device:
    """NCCL moves tensors between GPUs only; gloo between CPUs."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
