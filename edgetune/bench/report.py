"""Results rows (the row format in docs/measure.md, plus detail) and their reports:
a rich table, JSON, Markdown and a PNG of accuracy against p50 latency."""

from __future__ import annotations

from pathlib import Path

# The row fields every results file has, in order (docs/measure.md); detail follows them.
ROW_FIELDS = (
    "dataset",
    "model",
    "stage",
    "runtime",
    "precision",
    "accuracy",
    "f1",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "throughput_fps",
    "size_mb",
    "macs",
    "machine",
    "date",
)


def make_row(result: dict, dataset: str | None, targets: list | None = None, reference: dict | None = None) -> dict:
    """One row from a runner's result (`edgetune.runtime.devicebench`); with the
    images' `targets`, the task's metrics of its results (and their agreement with
    the `reference` runner result's)."""
    from edgetune import tasks

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
        "inference_precision": result.get("inference_precision"),
        "e2e_ms_p50": lat["e2e"]["p50_ms"],
        "e2e_frame": result.get("e2e_frame"),
        "e2e_resize": art.get("resize_dtype"),  # what preprocessing resizes: uint8, or float32 (runs made before)
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
        "task": art.get("task") or tasks.DEFAULT,
    }
    predictions = result.get("predictions")
    if predictions is not None and targets is not None and len(predictions) == len(targets):
        task = tasks.get(row["task"])
        results = [task.session.from_json(p) for p in predictions]
        ref = [task.session.from_json(p) for p in reference["predictions"]] if reference is not None else None
        row.update(task.row_metrics(results, targets, art["classes"], ref))
    return row


def complete_rows(rows: list[dict]) -> None:
    """What a row says in relation to the others: `speedup_vs_pytorch`, the PyTorch
    float baseline's p50 over the row's (same machine); and a `name` that tells
    apart bundles named alike (two builds' `bundle-intel`) by their folders."""
    for row in rows:
        base = next(
            (r for r in rows if r["runtime"] == "pytorch" and r["stage"] == "float" and r["machine"] == row["machine"]),
            None,
        )
        row["speedup_vs_pytorch"] = base["latency_ms_p50"] / row["latency_ms_p50"] if base else None
    for name in {r["name"] for r in rows}:
        # a device's copy keeps its bundle's name
        alike = [r for r in rows if r["name"] == name and not r.get("remote") and r.get("path")]
        paths = [Path(r["path"]).resolve() for r in alike]
        if len(set(paths)) < 2:
            continue
        for depth in (1, 2, 3):  # the shortest tail of the paths that differs
            tails = ["/".join(p.parts[-depth:]) for p in paths]
            if len(set(tails)) == len(set(paths)):
                break
        for r, tail in zip(alike, tails):
            r["name"] = tail if tail.endswith(name) else f"{tail} ({name})"


def precision_label(r: dict) -> str:
    """The artifact's precision, and what it really ran in where that differs
    (an fp16 IR on a CPU without fp16: "fp16 (ran bf16)")."""
    ran, prec = r.get("inference_precision"), r["precision"]
    return prec if ran in (None, prec) or (prec == "int8" and ran == "fp32") else f"{prec} (ran {ran})"


def _f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


COLUMNS = [  # header, row -> text; the task's metric columns go after "prec."
    ("artifact", lambda r: r["name"]),
    ("stage", lambda r: r["stage"] or "-"),
    ("runtime", lambda r: r["runtime"]),
    ("prec.", lambda r: precision_label(r)),
    ("agree", lambda r: _f(r["agreement"], ".4f")),
    ("p50 ms", lambda r: _f(r["latency_ms_p50"], ".3f")),
    ("p90 ms", lambda r: _f(r["latency_ms_p90"], ".3f")),
    ("p99 ms", lambda r: _f(r["latency_ms_p99"], ".3f")),
    ("e2e p50 ms", lambda r: _f(r["e2e_ms_p50"], ".3f")),
    (
        "pre ms",
        lambda r: _f(r["e2e_ms_p50"] - r["latency_ms_p50"] if r.get("e2e_ms_p50") is not None else None, "+.3f"),
    ),
    ("img/s", lambda r: f"{r['throughput_fps']:.1f} (b{r['throughput_batch']})"),
    ("speedup", lambda r: _f(r.get("speedup_vs_pytorch"), ".2f") + ("x" if r.get("speedup_vs_pytorch") else "")),
    ("size MB", lambda r: _f(r["size_mb"], ".2f")),
    ("MMACs", lambda r: _f(r["macs"] / 1e6 if r["macs"] else None, ".1f")),
    ("load s", lambda r: _f(r["load_s"], ".2f")),
    ("peak MB", lambda r: _f(r["peak_rss_mb"], ".0f")),
    ("machine", lambda r: r["machine"]),
]


def row_task(rows: list[dict]):
    """The task the rows share (a table shows its metrics), else the default one."""
    from edgetune import tasks

    names = {r.get("task") or tasks.DEFAULT for r in rows}
    return tasks.get(names.pop() if len(names) == 1 else tasks.DEFAULT)


def columns(rows: list[dict]) -> list:
    """The table's columns, the rows' task's metrics among them (accuracy and F1;
    an anomaly detector's image AUROC and false alarms; ...)."""
    metrics = [(header, lambda r, k=key, f=fmt: _f(r.get(k), f)) for header, key, fmt in row_task(rows).columns]
    i = [h for h, _ in COLUMNS].index("prec.") + 1
    return COLUMNS[:i] + metrics + COLUMNS[i:]


# What a terminal too narrow for every column shows (the JSON and Markdown keep them all).
NARROW = ("artifact", "runtime", "prec.", "p50 ms", "e2e p50 ms", "speedup", "size MB")


def print_table(rows: list[dict], title: str) -> None:
    from edgetune import log

    cols = columns(rows)
    table = _table(rows, title, cols)
    if log.console.is_terminal and log.console.measure(table).maximum > log.console.width:
        metrics = [h for h, _, _ in row_task(rows).columns]
        cols = [c for c in cols if c[0] in NARROW or c[0] in metrics]
        table = _table(rows, title + " (the other columns: --json, --markdown)", cols)
    log.print_table(table)


def _table(rows: list[dict], title: str, cols: list):
    from rich.table import Table

    t = Table(title=title)
    for header, _ in cols:
        t.add_column(
            header,
            justify="left" if header in ("artifact", "stage", "runtime", "prec.", "machine") else "right",
            overflow="fold",
        )
    for r in rows:
        t.add_row(*(fn(r) for _, fn in cols))
    return t


def markdown(rows: list[dict], title: str) -> str:
    COLUMNS = columns(rows)  # noqa: N806 - the same table as print_table
    lines = [f"### {title}", "", "| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fn(r).replace("|", "/") for _, fn in COLUMNS) + " |" for r in rows]
    lines += [
        "",
        "Latency is the model call alone at batch 1 (p50/p90/p99 over all timed runs, outliers kept); e2e adds "
        "preprocessing from a uint8 camera frame (640x480 unless `--frame` says otherwise), pre = e2e p50 - p50. "
        "Speedup is against PyTorch float on the same machine.",
    ]
    return "\n".join(lines) + "\n"


def point_label(r: dict, rows: list[dict]) -> str:
    """What tells a point apart: stage (float, pruned, pruned+qat, ...), runtime and
    precision; the artifact's name too where two rows would read alike."""

    def short(x):
        return f"{x.get('stage') or '-'} {x['runtime']} {precision_label(x)}"

    label = short(r)
    return label if sum(short(x) == label for x in rows) == 1 else f"{label}\n{r['name']}"


def pareto_front(rows: list[dict], metric: str = "accuracy") -> list[dict]:
    """The rows no other row beats on both `metric` (higher is better: accuracy; an anomaly model's
    auroc) and p50 latency, fastest first."""
    pts = sorted((r for r in rows if r.get(metric) is not None), key=lambda r: (r["latency_ms_p50"], -r[metric]))
    front, best = [], -1.0
    for r in pts:
        if r[metric] > best:
            front.append(r)
            best = r[metric]
    return front


# Label positions tried around a point (offset in points, horizontal alignment): right, left,
# then further above and below, until a label inside the axes overlaps neither another label nor a point.
_OFFSETS = [((7, 3), "left"), ((-7, 3), "right"), ((7, -11), "left"), ((-7, -11), "right")] + [
    ((dx, dy * k), ha) for k in range(2, 40) for dy in (9, -9) for dx, ha in (((7, "left"), (-7, "right")))
]


def place_labels(ax, points: list[tuple[float, float]], labels: list[str]) -> list:
    """Annotations for `points`, each at the first position of `_OFFSETS` where its box
    overlaps no label placed before it; far ones get a leader line."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    marker = 3  # px around each point that a label must not cover
    taken = [
        Bbox.from_extents(px - marker, py - marker, px + marker, py + marker)
        for px, py in ax.transData.transform(points)
    ]
    placed = []
    for (x, y), text in sorted(zip(points, labels), key=lambda pl: (pl[0][0], -pl[0][1])):
        for i, (offset, ha) in enumerate(_OFFSETS):
            ann = ax.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=offset,
                ha=ha,
                va="bottom",
                fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if i >= 4 else None,
            )
            ann.update_positions(renderer)
            text_box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            box = Bbox.from_extents(text_box.x0 - 1, text_box.y0 - 1, text_box.x1 + 1, text_box.y1 + 1)
            inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
            if (inside and not any(box.overlaps(t) for t in taken)) or i == len(_OFFSETS) - 1:
                break
            ann.remove()
        taken.append(box)
        placed.append(ann)
    return placed


def plot(rows: list[dict], path: Path, title: str) -> dict:
    """Accuracy against p50 latency (log axis), one labelled point per row and the
    Pareto front (the rows nothing beats on both). Returns what was drawn: the x
    scale and each label's text and box (display units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from edgetune.runtime.files import atomic_path

    rows = [r for r in rows if r["latency_ms_p50"] and r["latency_ms_p50"] > 0]
    task = row_task(rows)
    metric = task.metric  # accuracy; an anomaly model's image AUROC; ...
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.set_xscale("log")
    front = pareto_front(rows, metric)
    if len(front) > 1:
        ax.step(
            [r["latency_ms_p50"] for r in front],
            [r[metric] for r in front],
            where="post",
            color="tab:green",
            alpha=0.6,
            lw=1.5,
            label="Pareto front (nothing faster and more accurate)",
        )
    points, labels = [], []
    for r in rows:
        y = r[metric] if r.get(metric) is not None else float("nan")
        ax.scatter(
            r["latency_ms_p50"],
            y,
            s=60 if r in front else 36,
            color="tab:green" if r in front else "tab:blue",
            zorder=3,
        )
        points.append((r["latency_ms_p50"], y))
        labels.append(point_label(r, rows))
    lat = [x for x, _ in points]
    if lat:  # room for the labels on both sides
        ax.set_xlim(min(lat) / 1.6, max(lat) * 1.6)
    accs = [y for _, y in points if y == y]
    if accs:
        pad = max(0.02, (max(accs) - min(accs)) * 0.25)
        ax.set_ylim(min(accs) - pad, min(1.0, max(accs)) + pad)
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel(task.metric_label)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if len(front) > 1:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    annotations = place_labels(ax, points, labels)
    renderer = fig.canvas.get_renderer()
    drawn = {
        "xscale": ax.get_xscale(),
        "labels": [(a.get_text(), Text.get_window_extent(a, renderer)) for a in annotations],
    }
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return drawn


def write_outputs(
    rows: list[dict], title: str, json_file: Path | None, md_file: Path | None, png_file: Path | None, meta: dict
) -> None:
    from edgetune.runtime.files import write_json, write_text

    if json_file:
        write_json(json_file, {"rows": rows, **meta})
    if md_file:
        write_text(md_file, markdown(rows, title))
    if png_file:
        plot(rows, png_file, title)
