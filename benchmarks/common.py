"""What every benchmark records next to its numbers: the machine and the date."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    # "AMD EPYC" names several generations: the vector instructions set the speed (and
    # INT8's gain: VNNI has integer dot products, AVX2 has not) and the last bits of
    # the arithmetic, so a training run on another generation ends elsewhere.
    isa = next(
        (
            name
            for flag, name in (
                ("avx512_vnni", "AVX-512 VNNI"),
                ("avx_vnni", "AVX-VNNI"),
                ("avx512f", "AVX-512"),
                ("avx2", "AVX2"),
            )
            if flag in flags
        ),
        "",
    )
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}{' ' + isa if isa else ''}, {os.cpu_count()} cores{gpu}, {platform.system()} {platform.release()}"


def today() -> str:
    return datetime.date.today().isoformat()


def latency_fields(stats: dict) -> dict:
    """A timing's stats (`edgetune.runtime.timing`) as the shared result format's
    latency columns: batch-1 percentiles and the frames a second they make."""
    return {
        "latency_ms_p50": stats["p50_ms"],
        "latency_ms_p90": stats["p90_ms"],
        "latency_ms_p99": stats["p99_ms"],
        "throughput_fps": 1000.0 / stats["p50_ms"],
    }


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]


def write_table(rows: list[dict], columns: list[str], path: Path, title: str, notes: str = "", intro: str = "") -> None:
    """A Markdown table of `rows` (the JSON beside it holds everything), `intro` above
    it and `notes` below."""
    from edgetune.runtime.files import write_text

    lines = [f"# {title}", "", *([intro, ""] if intro else []), *markdown_table(rows, columns)]
    write_text(path, "\n".join(lines + ["", notes]).rstrip() + "\n")


def smoke_data(work: Path, n_per_class: int) -> Path:
    """Generated images for a --smoke run (checks a script, not its numbers), in
    WORK/smoke_data; WORK is the smoke run's own folder, never the real runs'."""
    from edgetune.data.synthetic import make_images

    return make_images(work / "smoke_data", n_per_class=n_per_class, size=40)
