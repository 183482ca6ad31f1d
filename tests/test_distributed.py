"""Scale-out under real `torchrun`: two gloo processes on the CPU.

The processes run tests/ddp_probe.py: the edgetune CLI, recording per rank the
training images its DistributedSampler handed out, the files it wrote and a hash
of its weights after training (see that file). torchrun's --redirects keeps each
rank's output apart, so the tests can tell who logged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, invoke, make_images, tiny_build_config

pytestmark = pytest.mark.slow
PROBE = REPO / "tests" / "ddp_probe.py"
EPOCHS = 3
FINETUNE = [
    "finetune",
    "--model",
    "test_efficientnet",
    "--no-pretrained",
    "--img-size",
    "32",
    "--batch-size",
    "4",
    "--lr",
    "3e-3",
    "--warmup-epochs",
    "0",
    "--epochs",
    str(EPOCHS),
]
N_TRAIN = 24  # of the 40 generated images (val 15%, test 25%): 12 per rank, 3 steps of 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list, root: Path, name: str, **env) -> tuple[list[str], dict, Path]:
    """The command, environment and probe folder of `torchrun --nproc-per-node 2 edgetune ARGS`."""
    probe = root / f"{name}-probe"
    probe.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--log-dir",
        str(root / f"{name}-logs"),
        "--redirects",
        "3",
        str(PROBE),
        *map(str, args),
    ]
    return cmd, {**os.environ, "COLUMNS": "200", "EDGETUNE_PROBE_DIR": str(probe), **env}, probe


def rank_output(root: Path, name: str, rank: int) -> str:
    """What rank `rank` wrote to stdout and stderr (torchrun --redirects)."""
    (d,) = (root / f"{name}-logs").glob(f"*/attempt_0/{rank}")
    return (d / "stdout.log").read_text() + (d / "stderr.log").read_text()


def probes(probe: Path) -> list[dict]:
    return [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    make_images(root / "images", n_per_class=20, size=32)
    return root


@pytest.fixture(scope="module")
def killed(ddp_root) -> dict:
    """A 2-rank fine-tune whose rank 1 is killed (SIGKILL) once the first epoch is saved."""
    out = ddp_root / "run"
    cmd, env, probe = torchrun(
        [*FINETUNE, "--data", ddp_root / "images", "--out", out], ddp_root, "killed", EDGETUNE_PROBE_SLOW="0.15"
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "ckpt" / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no epoch finished in 300 s"
        time.sleep(0.1)
    os.kill(int((probe / "rank1.pid").read_text()), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    return {
        "out": out,
        "returncode": proc.returncode,
        "torchrun": stdout + stderr,
        "rank0": rank_output(ddp_root, "killed", 0),
    }


@pytest.fixture(scope="module")
def resumed(ddp_root, killed) -> dict:
    """The same command rerun with --resume, to the end."""
    cmd, env, probe = torchrun(
        [*FINETUNE, "--data", ddp_root / "images", "--out", killed["out"], "--resume"], ddp_root, "resumed"
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        proc.stdout + proc.stderr + rank_output(ddp_root, "resumed", 0) + rank_output(ddp_root, "resumed", 1)
    )
    return {
        "out": killed["out"],
        "probes": probes(probe),
        "logs": [rank_output(ddp_root, "resumed", r) for r in (0, 1)],
    }


def test_killing_one_rank_stops_every_rank_with_a_message(killed):
    assert killed["returncode"] != 0
    # torchrun names the killed rank; the survivor says why it stopped and what to do
    assert "exitcode  : -9" in killed["torchrun"], killed["torchrun"][-3000:]
    assert "Error: rank 0 of 2:" in killed["rank0"], killed["rank0"][-3000:]
    assert "--resume" in killed["rank0"]
    assert not (killed["out"] / "run.json").exists()  # unfinished, not passed off as a run


def test_resume_continues_from_the_last_full_epoch(resumed):
    log0 = resumed["logs"][0]
    assert f"Resuming finetune from epoch 2 of {EPOCHS}" in log0, log0
    assert f"finetune epoch {EPOCHS}/{EPOCHS}" in log0 and "finetune epoch 1/" not in log0
    info = json.loads((resumed["out"] / "run.json").read_text())
    record = info["history"][0]
    assert [e["epoch"] for e in record["metrics"]["epochs"]] == list(range(1, EPOCHS + 1))
    assert (record["world_size"], record["batch_size_per_rank"], record["global_batch_size"], record["backend"]) == (
        2,
        4,
        8,
        "gloo",
    )
    assert all(
        e["train_images"] == N_TRAIN and e["train_seconds"] > 0 for e in record["metrics"]["epochs"]
    )  # both ranks' steps, summed


def test_each_rank_trains_on_a_disjoint_half(resumed):
    r0, r1 = resumed["probes"]
    epochs = [s["epoch"] for s in r0["samples"]]
    assert epochs == list(range(1, EPOCHS)) == [s["epoch"] for s in r1["samples"]]  # the resumed epochs, reseeded each
    for a, b in zip(r0["samples"], r1["samples"]):
        assert len(a["indices"]) == len(b["indices"]) == N_TRAIN // 2
        assert not set(a["indices"]) & set(b["indices"])
        assert set(a["indices"]) | set(b["indices"]) == set(range(N_TRAIN))
    assert r0["samples"][0]["indices"] != r0["samples"][1]["indices"]  # a new shuffle each epoch


def test_one_process_logs_and_writes_and_weights_agree(resumed):
    r0, r1 = resumed["probes"]
    log0, log1 = resumed["logs"]
    assert "Fine-tuned test_efficientnet" in log0
    assert log1.strip() == "", log1
    assert r1["writes"] == []
    out = str(resumed["out"].resolve())
    assert [w for w in r0["writes"] if w.endswith("/run.json")] == [f"{out}/run.json"]
    assert len(r0["fits"]) == len(r1["fits"]) == 1
    assert r0["fits"][0]["weights"] == r1["fits"][0]["weights"]


def test_build_under_torchrun(ddp_root):
    """Fine-tune and QAT distributed; export, compile and bundle once, on rank 0."""
    from edgetune.runtime.bundle import load_bundle

    out = ddp_root / "build"
    out.mkdir()
    cfg = tiny_build_config(out / "build.yaml", ddp_root / "images", finetune_epochs=1, quantize_epochs=1)
    cfg.write_text(cfg.read_text().replace("batch-size: 8", "batch-size: 4"))
    cmd, env, probe = torchrun(["--config", cfg, "build", "--target", "cpu", "--out", out], ddp_root, "build")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log0, log1 = rank_output(ddp_root, "build", 0), rank_output(ddp_root, "build", 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr + log0 + log1
    assert "qat epoch 1/1" in log0 and "Build finished" in log0
    assert log1.strip() == "", log1
    r0, r1 = probes(probe)
    assert [f["desc"] for f in r0["fits"]] == [f["desc"] for f in r1["fits"]] == ["finetune", "qat"]
    assert [f["weights"] for f in r0["fits"]] == [
        f["weights"] for f in r1["fits"]
    ]  # QAT from identically calibrated quantizers
    assert r1["writes"] == []
    assert any(w.endswith("bundle-cpu.tar.gz") for w in r0["writes"])
    for stage in ("finetune", "quantize"):
        record = json.loads((out / stage / "run.json").read_text())["history"][-1]
        assert (record["world_size"], record["batch_size_per_rank"], record["global_batch_size"]) == (2, 4, 8)
    assert load_bundle(out / "bundle-cpu").precision == "int8"


@pytest.fixture
def as_rank(monkeypatch):
    """This process posing as a torchrun rank (its environment); what the CLI sets
    for such a process (log levels, SIGTERM handler) is put back afterwards."""
    import logging

    levels = {name: logging.getLogger(name).level for name in ("torch", "nncf", "timm")}
    handler = signal.getsignal(signal.SIGTERM)
    yield monkeypatch
    signal.signal(signal.SIGTERM, handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_cuda_with_too_few_gpus_is_a_clear_error_on_every_rank(as_rank, capfd, tmp_path):
    import torch

    monkeypatch = as_rank
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        if rank < torch.cuda.device_count():
            continue  # this rank has its GPU
        assert invoke(*FINETUNE, "--data", tmp_path, "--device", "cuda", "--out", tmp_path / "run") == 2
        err = capfd.readouterr().err
        assert f"this process is local rank {rank} of 2" in err and f"has {torch.cuda.device_count()} GPU(s)" in err, (
            err
        )
        assert "Traceback" not in err


def test_unreachable_rendezvous_times_out_naming_it(as_rank, capfd, tmp_path):
    port = free_port()  # nobody listens there
    for k, v in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "EDGETUNE_DIST_TIMEOUT": "2",
    }.items():
        as_rank.setenv(k, v)
    started = time.time()
    assert invoke(*FINETUNE, "--data", tmp_path, "--out", tmp_path / "run") == 2
    err = capfd.readouterr().err
    assert f"could not join the process group at 127.0.0.1:{port}" in err, err
    assert time.time() - started < 60


def test_commands_that_do_not_train_run_on_rank_0_alone(as_rank, capfd, tmp_path):
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        as_rank.setenv(k, v)
    assert invoke("evaluate", tmp_path / "no-such-run") == 0  # rank 1 leaves it to rank 0
    assert capfd.readouterr().err == ""
    as_rank.setenv("RANK", "0")
    as_rank.setenv("LOCAL_RANK", "0")
    assert invoke("evaluate", tmp_path / "no-such-run") == 2
    assert "no such run directory" in capfd.readouterr().err


def test_anomaly_fit_runs_on_rank_0_alone(as_rank, capfd, tmp_path):
    """PatchCore's fit is one process's work: rank 1 leaves it (and --out) to rank 0."""
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        as_rank.setenv(k, v)
    out = tmp_path / "fit"
    assert (
        invoke("finetune", "--task", "anomaly", "--data", tmp_path / "no-such-data", "--normal", "good", "--out", out)
        == 0
    )
    assert capfd.readouterr().err == "" and not out.exists()
