"""Training throughput of one process against two under torchrun (DDP).

    python benchmarks/ddp_scaling.py [--data DIR|elpv] [--model efficientnet_lite0] [--img-size 64]
                                     [--epochs 3] [--rounds 2] [--batch-size 32] [--processes 2]

Three ways to spend the same cores on `edgetune finetune` (--no-pretrained, the
same split and recipe):

    1 process x 1 thread                     the baseline
    1 process x N threads                    intra-op threads (OMP_NUM_THREADS=N)
    N processes x 1 thread, torchrun gloo    DistributedDataParallel (CUDA: NCCL, one GPU each)

The default data are 480 generated 64x64 images in two classes (written to a
temporary folder): the throughput of a training step does not depend on what the
images show, and a small set keeps validation and start-up short on a busy CPU.
Throughput is training images per second of the training steps only (each epoch's
`train_images` / `train_seconds` from run.json; the first epoch is dropped as
warm-up), so start-up, validation and the test pass do not count. --batch-size is
per process: two processes take twice the global batch, the usual weak scaling of
DDP. Rounds alternate the three set-ups so that load from other processes on a
shared machine hits them alike; each row is a set-up's median over its rounds.

With a GPU (CUDA) the set-ups are: 1 process on 1 GPU, N processes on N GPUs.

Writes benchmarks/results/ddp_scaling.json (rows as DESIGN.md's format, plus
processes, threads, images_per_s, speedup) and ddp_scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, today, write_table  # noqa: E402

from edgetune.runtime.files import write_json  # noqa: E402

EDGETUNE = [sys.executable, "-m", "edgetune.cli.main"]


def generated_images(root: Path, n_per_class: int = 240, size: int = 64) -> Path:
    """Noisy bright cells; 'defect' ones crossed by a dark line."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for c, name in enumerate(("ok", "defect")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.normal(170, 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
            if c:
                off = int(rng.integers(-size // 4, size // 4))
                cv2.line(img, (0, size // 2 + off), (size - 1, size // 2 - off), (20, 20, 20), max(2, size // 12))
            cv2.imwrite(str(root / name / f"{i:04d}.png"), img)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(setup: dict, args, out: Path, cuda: bool) -> dict:
    """One fine-tune in `setup`; its throughput and test accuracy from run.json."""
    train = [
        "finetune",
        "--data",
        args.data,
        "--model",
        args.model,
        "--no-pretrained",
        "--img-size",
        str(args.img_size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--warmup-epochs",
        "0",
        "--seed",
        "0",
        "--device",
        "cuda" if cuda else "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(setup["threads"])}
    if setup["processes"] == 1:
        cmd = [*EDGETUNE, "-q", *train]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(setup["processes"]),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            "-m",
            "edgetune.cli.main",
            "-q",
            *train,
        ]
    subprocess.run(cmd, env=env, check=True)
    record = json.loads((out / "run.json").read_text())["history"][0]
    epochs = record["metrics"]["epochs"][1:] or record["metrics"]["epochs"]
    return {
        "images_per_s": statistics.median(e["train_images"] / e["train_seconds"] for e in epochs),
        "accuracy": record["metrics"]["test"]["accuracy"],
        "f1": record["metrics"]["test"]["f1"],
        "world_size": record["world_size"],
        "global_batch_size": record["global_batch_size"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="Images to train on (default: generated); 'elpv' for the ELPV cells.")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--notes", default="", help="Added to the table's notes (e.g. what else loaded the machine).")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    n = args.processes
    setups = (
        [
            {"name": "1 GPU", "processes": 1, "threads": 1},
            {"name": f"{n} GPUs, DDP (NCCL)", "processes": n, "threads": 1},
        ]
        if cuda
        else [
            {"name": "1 process x 1 thread", "processes": 1, "threads": 1},
            {"name": f"1 process x {n} threads", "processes": 1, "threads": n},
            {"name": f"{n} processes x 1 thread, DDP (gloo)", "processes": n, "threads": 1},
        ]
    )
    measured: dict[str, list[dict]] = {s["name"]: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            args.data = str(generated_images(Path(tmp) / "images"))
            dataset = "generated 64px, 2 classes, 480 images"
        else:
            dataset = args.data
        for r in range(args.rounds):
            for i, s in enumerate(setups):
                m = run(s, args, Path(tmp) / f"r{r}-{i}", cuda)
                print(
                    f"round {r + 1}: {s['name']}: {m['images_per_s']:.1f} images/s, test accuracy {m['accuracy']:.4f}",
                    flush=True,
                )
                measured[s["name"]].append(m)

    base = statistics.median(m["images_per_s"] for m in measured[setups[0]["name"]])
    rows = []
    for s in setups:
        ms = measured[s["name"]]
        ips = statistics.median(m["images_per_s"] for m in ms)
        rows.append(
            {
                "dataset": dataset,
                "model": args.model,
                "stage": "float",
                "runtime": "pytorch",
                "precision": "fp32",
                "accuracy": statistics.median(m["accuracy"] for m in ms),
                "f1": statistics.median(m["f1"] for m in ms),
                "setup": s["name"],
                "processes": s["processes"],
                "threads": s["threads"],
                "input": f"{args.img_size}x{args.img_size}",
                "batch_size_per_process": args.batch_size,
                "global_batch_size": ms[0]["global_batch_size"],
                "epochs": args.epochs,
                "rounds": args.rounds,
                "images_per_s": round(ips, 1),
                "images_per_s_rounds": [round(m["images_per_s"], 1) for m in ms],
                "speedup": round(ips / base, 3),
                "machine": machine(),
                "date": today(),
            }
        )
    key = ("dataset", "model", "input", "setup", "machine")
    path = RESULTS / "ddp_scaling.json"
    old = json.loads(path.read_text()) if path.exists() else []
    fresh = {tuple(r[k] for k in key) for r in rows}
    all_rows = [r for r in old if tuple(r.get(k) for k in key) not in fresh] + rows
    write_json(path, all_rows)
    notes = (
        "Training images per second over the training steps (run.json's train_images / train_seconds per epoch, first "
        "epoch dropped), median over rounds that alternate the set-ups; speedup against the first set-up of the same "
        "machine. --batch-size is per process: N processes train a global batch N times larger (weak scaling), "
        "with the learning rate as given. Accuracy (test, after these few epochs from random weights) fills the row "
        "format; it says nothing about the set-ups. " + args.notes
    ).strip()
    write_table(
        all_rows,
        [
            "machine",
            "model",
            "input",
            "setup",
            "global_batch_size",
            "images_per_s",
            "images_per_s_rounds",
            "speedup",
            "accuracy",
        ],
        RESULTS / "ddp_scaling.md",
        "Training throughput: one process against DDP under torchrun",
        notes,
    )


if __name__ == "__main__":
    main()
