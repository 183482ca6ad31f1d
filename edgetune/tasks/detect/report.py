"""What people look at for a detector: the metrics (a table on screen, JSON for
machines, with `map50` and `map50_95`), the precision-recall curve of each class
at IoU 0.5 (COCOeval's), and a gallery of test images with the true boxes and the
reported ones: a missed true box in red, a false alarm in magenta, a found box
with its match in green (the images with most mistakes first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from edgetune import log
from edgetune.tasks.detect.metrics import iou
from edgetune.tasks.figures import image_grid, save_fig

GREEN, RED, MAGENTA, GREY = (0.1, 0.8, 0.1), (0.9, 0.1, 0.1), (0.9, 0.1, 0.9), (0.6, 0.6, 0.6)


def mistakes(result, target) -> tuple[list[int], list[int], list[int]]:
    """(true boxes found, true boxes missed, reported boxes that match none) at IoU 0.5, same class."""
    gb, gl = np.asarray(target["boxes"], float).reshape(-1, 4), np.asarray(target["labels"], int)
    rep = np.flatnonzero(result.reported)
    free, false = np.ones(len(gb), bool), []
    for k in rep[np.argsort(-result.scores[rep])]:
        same = np.flatnonzero((gl == result.classes[k]) & free)
        ov = iou(result.boxes[k : k + 1], gb[same])[0] if len(same) else np.zeros(0)
        if len(ov) and ov.max() >= 0.5:
            free[same[int(np.argmax(ov))]] = False
        else:
            false.append(int(k))
    return [int(i) for i in np.flatnonzero(~free)], [int(i) for i in np.flatnonzero(free)], false


def plot_curves(m: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    recall = m["pr_curves"]["recall"]
    for name, precision in m["pr_curves"]["precision"].items():
        ap = m["per_class"][name]["ap50"]
        ax.plot(recall, precision, label=f"{name} (AP50 {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_fig(fig, path)


def plot_gallery(pairs: list, results: list, classes: list[str], path: Path, top: int = 12) -> int:
    from matplotlib.patches import Rectangle
    from PIL import Image

    marks = [mistakes(r, t) for r, (_, t) in zip(results, pairs)]
    order = sorted(range(len(pairs)), key=lambda i: -(len(marks[i][1]) + len(marks[i][2])))[:top]
    fig, axes = image_grid(len(order), cell=(3.2, 3.5))
    for ax, i in zip(axes.flat, order):
        (p, t), r, (found, missed, false) = pairs[i], results[i], marks[i]
        with Image.open(p) as im:
            ax.imshow(im.convert("RGB"))
        gb, gl = np.asarray(t["boxes"], float).reshape(-1, 4), list(t["labels"])

        def box(b, colour, style="-"):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=colour, lw=1.5, ls=style))

        for k in found:
            box(gb[k], GREEN, "--")
        for k in missed:
            box(gb[k], RED, "--")
            ax.text(gb[k][0], gb[k][3], f"missed {classes[gl[k]]}", color=RED, fontsize=7, va="top")
        for k in np.flatnonzero(r.reported):
            colour = MAGENTA if k in false else GREEN
            box(r.boxes[k], colour)
            label = f"{classes[r.classes[k]]} {r.scores[k]:.2f}"
            ax.text(r.boxes[k][0], r.boxes[k][1], label, color=colour, fontsize=7)
        ax.set_title(f"{Path(p).name}\n{len(missed)} missed, {len(false)} false alarms", fontsize=8)
    fig.suptitle("True boxes dashed (red: missed), reported boxes solid (magenta: false alarm)", fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)
    return len(order)


def print_metrics(m: dict, title: str) -> None:
    summary = Table(title=title, show_header=False)
    summary.add_row("images / true boxes", f"{m['n']} / {m['boxes']}")
    summary.add_row("mAP@0.5", f"{m['map50']:.4f}")
    summary.add_row("mAP@0.5:0.95", f"{m['map50_95']:.4f}")
    summary.add_row("score threshold", f"{m['score_threshold']:.3f} ({m.get('threshold_rule', '')})")
    for k in ("precision", "recall", "f1"):
        summary.add_row(f"{k} at the threshold", f"{m[k]:.4f}")
    per = Table(title="per class")
    for col in ("class", "AP50", "AP50:95", "precision", "recall", "F1", "boxes"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for c, v in m["per_class"].items():
        ap = [f"{v[k]:.4f}" if v.get(k) is not None else "-" for k in ("ap50", "ap50_95")]
        per.add_row(c, *ap, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", str(v["boxes"]))
    if not log.quiet():
        log.console.print(summary, per)


def report(run, part: str, json_file: Path | None, batch_size: int) -> dict:
    from edgetune.runtime.files import write_json
    from edgetune.runtime.tasks.detect import DetectSession

    m = run.task_impl.evaluate(run.build_model(), run.split, run.spec, part, batch_size)
    results = m.pop("results")
    pairs = run.split.parts[part]
    m["predictions"] = [{"path": p, **DetectSession.to_json(r)} for (p, _), r in zip(pairs, results)]
    title = f"{run.model_name} ({run.stage}), {part} split"
    m["files"] = {"pr_curves": str(run.dir / f"pr_curves_{part}.png"), "gallery": str(run.dir / f"gallery_{part}.png")}
    plot_curves(m, Path(m["files"]["pr_curves"]), title)
    shown = plot_gallery(pairs, results, run.classes, Path(m["files"]["gallery"]))
    write_json(run.dir / f"eval_{part}.json", m)
    if json_file:
        write_json(json_file, m)
    print_metrics(m, f"{run.dir} ({run.model_name}, {run.stage}) on the {part} split")
    if not log.quiet():
        log.console.print(f"Gallery of the {shown} images with most mistakes: {m['files']['gallery']}")
    return m
