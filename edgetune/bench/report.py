"""Results rows (the row format in docs/measure.md, plus detail) and their reports:
a rich table, JSON, Markdown and a PNG of accuracy against p50 latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune.metrics import agreement, classification_metrics

# The row fields every results file has, in order (docs/measure.md); detail follows them.
ROW_FIELDS = ("dataset", "model", "stage", "runtime", "precision", "accuracy", "f1", "latency_ms_p50", "latency_ms_p90",
              "latency_ms_p99", "throughput_fps", "size_mb", "macs", "machine", "date")


def make_row(result: dict, dataset: str | None, labels: np.ndarray | None = None, reference_logits: np.ndarray | None = None) -> dict:
    """One row from a runner's result (`edgetune.runtime.devicebench`)."""
    art, lat = result["artifact"], result["latency"]
    best_batch, best = max(result["throughput"].items(), key=lambda kv: kv[1]["fps"])
    row = {
        "name": art["name"],
        "dataset": dataset,
        "model": art.get("model"),
        "stage": art.get("stage"),
        "runtime": art["runtime"],
        "precision": art["precision"],
        "accuracy": None,
        "f1": None,
        "latency_ms_p50": lat["model"]["p50_ms"],
        "latency_ms_p90": lat["model"]["p90_ms"],
        "latency_ms_p99": lat["model"]["p99_ms"],
        "throughput_fps": best["fps"],
        "size_mb": art["size_bytes"] / 1e6,
        "macs": art.get("macs"),
        "machine": result["device"]["machine"],
        "date": result["date"],
        # detail
        "latency_ms_mean": lat["model"]["mean_ms"],
        "latency_ms_std": lat["model"]["std_ms"],
        "latency_runs": lat["model"]["n"],
        "e2e_ms_p50": lat["e2e"]["p50_ms"],
        "e2e_ms_p99": lat["e2e"]["p99_ms"],
        "throughput_batch": int(best_batch),
        "throughput_by_batch": {b: t["fps"] for b, t in result["throughput"].items()},
        "load_s": result["load_s"],
        "peak_rss_mb": result["peak_rss_mb"],
        "params": art.get("params"),
        "threads": result.get("threads"),
        "agreement": None,
        "per_class_recall": None,
        "n_images": None,
        "path": art.get("path"),
        "device": result["device"],
        "python": result.get("python"),
    }
    logits = np.asarray(result["logits"]) if result.get("logits") is not None else None
    if logits is not None and labels is not None and len(logits) == len(labels):
        m = classification_metrics(labels, logits, art["classes"], full=False)
        row.update(accuracy=m["accuracy"], f1=m["f1"], n_images=m["n"], per_class_recall={c: v["recall"] for c, v in m["per_class"].items()})
        if reference_logits is not None:
            row["agreement"] = agreement(reference_logits, logits)
    return row


def add_speedups(rows: list[dict]) -> None:
    """`speedup`: the PyTorch float baseline's p50 over each row's p50 (same machine)."""
    for row in rows:
        base = next((r for r in rows if r["runtime"] == "pytorch" and r["stage"] == "float" and r["machine"] == row["machine"]), None)
        row["speedup_vs_pytorch"] = base["latency_ms_p50"] / row["latency_ms_p50"] if base else None


def _f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


COLUMNS = [  # header, row -> text
    ("artifact", lambda r: r["name"]),
    ("stage", lambda r: r["stage"] or "-"),
    ("runtime", lambda r: r["runtime"]),
    ("prec.", lambda r: r["precision"]),
    ("accuracy", lambda r: _f(r["accuracy"], ".4f")),
    ("F1", lambda r: _f(r["f1"], ".4f")),
    ("agree", lambda r: _f(r["agreement"], ".4f")),
    ("p50 ms", lambda r: _f(r["latency_ms_p50"], ".3f")),
    ("p90 ms", lambda r: _f(r["latency_ms_p90"], ".3f")),
    ("p99 ms", lambda r: _f(r["latency_ms_p99"], ".3f")),
    ("e2e p50 ms", lambda r: _f(r["e2e_ms_p50"], ".3f")),
    ("img/s", lambda r: f"{r['throughput_fps']:.1f} (b{r['throughput_batch']})"),
    ("speedup", lambda r: _f(r.get("speedup_vs_pytorch"), ".2f") + ("x" if r.get("speedup_vs_pytorch") else "")),
    ("size MB", lambda r: _f(r["size_mb"], ".2f")),
    ("MMACs", lambda r: _f(r["macs"] / 1e6 if r["macs"] else None, ".1f")),
    ("load s", lambda r: _f(r["load_s"], ".2f")),
    ("peak MB", lambda r: _f(r["peak_rss_mb"], ".0f")),
    ("machine", lambda r: r["machine"]),
]


def print_table(rows: list[dict], title: str) -> None:
    from rich.table import Table

    from edgetune import log

    t = Table(title=title)
    for header, _ in COLUMNS:
        t.add_column(header, justify="left" if header in ("artifact", "stage", "runtime", "prec.", "machine") else "right", overflow="fold")
    for r in rows:
        t.add_row(*(fn(r) for _, fn in COLUMNS))
    log.console.print(t)


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fn(r).replace("|", "/") for _, fn in COLUMNS) + " |" for r in rows]
    lines += ["", "Latency is the model call alone at batch 1 (p50/p90/p99 over all timed runs, outliers kept); "
              "e2e adds preprocessing from a uint8 frame. Speedup is against PyTorch float on the same machine."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy against p50 latency, one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetune.runtime.files import atomic_path

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        y = r["accuracy"] if r["accuracy"] is not None else float("nan")
        ax.scatter(r["latency_ms_p50"], y, s=60)
        ax.annotate(f"{r['name']}\n{r['runtime']} {r['precision']}", (r["latency_ms_p50"], y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    lat = [r["latency_ms_p50"] for r in rows]
    if lat and max(lat) / max(min(lat), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_outputs(rows: list[dict], title: str, json_file: Path | None, md_file: Path | None, png_file: Path | None, meta: dict) -> None:
    from edgetune.runtime.files import write_json, write_text

    if json_file:
        write_json(json_file, {"rows": rows, **meta})
    if md_file:
        write_text(md_file, markdown(rows, title))
    if png_file:
        plot(rows, png_file, title)
