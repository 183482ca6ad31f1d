"""`make bench`: every benchmark, in dependency order, on this machine. Hours on a
2-core CPU; each step skips work whose output is already there, so an interrupted
run continues. Results land in benchmarks/results/ (commit them with the machine).

    python benchmarks/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compress_elpv import PRUNED_QAT  # noqa: E402
from finetune_elpv import CHOSEN  # noqa: E402

PY = sys.executable
EDGETUNE = [PY, "-m", "edgetune.cli.main"]
FLOAT = f"benchmarks/work/finetune_elpv/{CHOSEN}"  # finetune_elpv.py's chosen recipe
COMPRESSED = "benchmarks/work/compress_elpv"  # compress_elpv.py's runs
TARGETS = ["--target", "cpu", "--target", "intel"]
# Each step builds on the one before: one fine-tuning, one QAT per model, reused.
STEPS = {
    "finetune": [[PY, "benchmarks/finetune_elpv.py"]],
    "compress": [[PY, "benchmarks/compress_elpv.py", "--float", FLOAT]],
    "latency": [
        [*EDGETUNE, "build", *TARGETS, "--from", f"{COMPRESSED}/qat", "--out", "runs/elpv"],
        [*EDGETUNE, "build", *TARGETS, "--from", f"{COMPRESSED}/{PRUNED_QAT}", "--out", "runs/elpv-pruned"],
        [PY, "benchmarks/benchmark_app_check.py", "--bundle", "runs/elpv/bundle-intel", "--threads", "2"],
        [
            PY,
            "benchmarks/latency_elpv.py",
            "--float",
            FLOAT,
            "--bundle",
            "runs/elpv/bundle-cpu",
            "--bundle",
            "runs/elpv/bundle-intel",
            "--pruned-bundle",
            "runs/elpv-pruned/bundle-cpu",
            "--pruned-bundle",
            "runs/elpv-pruned/bundle-intel",
        ],
    ],
    "prune-latency": [
        [PY, "benchmarks/prune_latency_elpv.py", "--float", FLOAT]
    ],  # --target-latency against --target-macs
    "infer": [[PY, "benchmarks/infer_throughput.py", "runs/elpv/bundle-cpu"]],
    "anomaly": [[PY, "benchmarks/anomaly_elpv.py"]],  # its own fit; with the label-budget curve
    "families": [  # independent of the ELPV steps
        [PY, "benchmarks/families.py"],
        [PY, "benchmarks/op_profile.py"],
        [PY, "benchmarks/selective_int8.py"],
        [PY, "benchmarks/mixed_targets.py"],  # the cpu artifact of a build with a jetson target
    ],
    "segment": [[PY, "benchmarks/segment_mt.py", "--reuse"]],  # magnetic-tile from ../shared/data: its own runs
    "detect": [[PY, "benchmarks/detect_neu.py", "--reuse"]],  # NEU-DET from ../shared/data: its own fine-tune and build
    "anomaly-mt": [[PY, "benchmarks/anomaly_mt.py", "--reuse"]],  # magnetic-tile's published protocol: pixel AUROC, PRO
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--only", action="append", choices=list(STEPS), help="run only these steps (infer needs latency's builds)"
    )
    names = p.parse_args().only or list(STEPS)
    for name in names:
        for cmd in STEPS[name]:
            print("+", " ".join(cmd[1:] if cmd[0] == PY else cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
