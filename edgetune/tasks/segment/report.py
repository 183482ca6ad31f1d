"""What people look at for a segmentation model: the metrics on screen (rich),
per-class IoU and Dice, and a gallery of the worst images first, each shown with
its true mask and the predicted one laid over it; the JSON beside them carries the
metrics (`miou` among them) and each image's numbers."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from edgetune import log
from edgetune.tasks.figures import image_grid, save_fig

GALLERY = 12


def worst_first(per_image: list[dict]) -> list[int]:
    """Images in order of their defect IoU (lowest first; an image with defects
    in neither truth nor prediction is not shown), ties by wrong pixels."""
    shown = [i for i, m in enumerate(per_image) if m["iou_defects"] is not None]
    return sorted(shown, key=lambda i: (per_image[i]["iou_defects"], -per_image[i]["error"]))


def plot_gallery(paths, targets, results, order: list[int], classes, path: Path, top: int = GALLERY) -> int:
    """Pairs of panels (truth | prediction) for the first `top` of `order`; returns how many."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetune.data.masks import read_label
    from edgetune.runtime.preprocess import read_image
    from edgetune.runtime.tasks.segment import class_colours, mask_overlay

    chosen = order[:top]
    fig, axes = image_grid(2 * len(chosen), cell=(3.0, 3.2), extra_height=0.6)  # two images a row
    for j, i in enumerate(chosen):
        image = read_image(paths[i])
        truth = read_label(targets[i], image.shape[:2])
        for k, (mask, what) in enumerate(((truth, "true"), (results[i].mask, "predicted"))):
            ax = axes.flat[2 * j + k]
            ax.imshow(cv2.cvtColor(mask_overlay(image, mask), cv2.COLOR_BGR2RGB))
            ax.set_title(f"{Path(paths[i]).name}\n{what}", fontsize=8)
    if not chosen:
        axes.flat[0].text(0.5, 0.5, "no image with defects", ha="center", va="center")
    colours = class_colours(len(classes))[1:, ::-1] / 255.0
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    fig.legend(handles, classes[1:], loc="lower center", ncol=min(len(classes) - 1, 6), fontsize=8)
    fig.suptitle("Worst images first (defect IoU): true mask | predicted mask")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_fig(fig, path)
    return len(chosen)


def print_metrics(m: dict, classes: list[str], title: str) -> None:
    summary = Table(title=title, show_header=False)
    summary.add_row("images", str(m["n"]))
    for key, label in (
        ("miou", "mIoU (with background)"),
        ("miou_defects", "mIoU (defect classes)"),
        ("pixel_accuracy", "pixel accuracy"),
        ("image_auroc", "image AUROC (defect score)"),
        ("image_f1", "image F1 (a region >= min area)"),
        ("region_recall", "region recall"),
    ):
        summary.add_row(label, "-" if m.get(key) is None else f"{m[key]:.4f}")
    per = Table(title="per class")
    for col in ("class", "IoU", "Dice", "true pixels"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for c in classes:
        pc = m["per_class"][c]
        per.add_row(c, *("-" if pc[k] is None else f"{pc[k]:.4f}" for k in ("iou", "dice")), str(pc["pixels"]))
    if not log.quiet():
        log.console.print(summary, per)


def report(task, run, part: str, json_file: Path | None, batch_size: int, min_area: int) -> dict:
    """`evaluate` on a segmentation run: metrics and the gallery in the run dir, tables on screen."""
    from edgetune.runtime.files import write_json
    from edgetune.tasks.segment.metrics import segmentation_metrics

    pairs = run.split.parts[part]
    paths, targets = [p for p, _ in pairs], [y for _, y in pairs]
    results = task.results(run.build_model(), pairs, run.spec, run.classes, min_area, min(batch_size, 16))
    m = segmentation_metrics(results, targets, run.classes, detail=True)
    order = worst_first(m["per_image"])
    gallery = run.dir / f"gallery_{part}.png"
    shown = plot_gallery(paths, targets, results, order, run.classes, gallery)
    m["per_image"] = [
        {"path": p, **d, "defective": r.defective, "defect_score": r.score}
        for p, d, r in zip(paths, m["per_image"], results)
    ]
    m["files"] = {"gallery": str(gallery)}
    write_json(run.dir / f"eval_{part}.json", m)
    if json_file:
        write_json(json_file, m)
    print_metrics(m, run.classes, f"{run.dir} ({run.model_name}, {run.stage}) on the {part} split")
    log.console.print(f"{shown} worst images (true | predicted): {gallery}")
    return m
