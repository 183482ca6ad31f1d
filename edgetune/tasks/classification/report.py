"""What people look at for a classifier: metrics tables (rich), a confusion-matrix
PNG and a gallery of the most confident mistakes (what to look at before adding
data). The JSON beside them is for machines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from edgetune import log
from edgetune.runtime.tasks.classification import softmax
from edgetune.tasks.figures import image_grid, save_fig


def print_metrics(m: dict, classes: list[str], title: str) -> None:
    summary = Table(title=title, show_header=False)
    summary.add_row("images", str(m["n"]))
    for key in ("accuracy", "balanced_accuracy", "f1", "roc_auc"):
        if key in m:
            summary.add_row(key.replace("_", " ") + (" (macro)" if key == "f1" else ""), f"{m[key]:.4f}")
    if "threshold" in m:
        t = m["threshold"]
        summary.add_row("decision threshold", f"{t['score']:.3f} (TPR {t['tpr']:.3f}, FPR {t['fpr']:.3f})")
    per = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        per.add_column(col, justify="right" if col != "class" else "left")
    for c in classes:
        pc = m["per_class"][c]
        per.add_row(c, f"{pc['precision']:.4f}", f"{pc['recall']:.4f}", f"{pc['f1']:.4f}", str(pc["support"]))
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for c in classes:
        cm.add_column(c, justify="right")
    for c, row in zip(classes, m.get("confusion_matrix", [])):
        cm.add_row(c, *map(str, row))
    out = log.console if not log.quiet() else None
    if out:
        out.print(summary, per, cm)


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    fig.tight_layout()
    save_fig(fig, path)


def plot_mistakes(
    pairs: list[tuple[str, int]], logits: np.ndarray, classes: list[str], path: Path, top: int = 16
) -> int:
    """Gallery of the most confident mistakes; returns how many are shown."""
    from PIL import Image

    probs = softmax(logits)
    pred = probs.argmax(1)
    labels = np.array([y for _, y in pairs])
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:top]
    fig, axes = image_grid(len(wrong))
    for ax, i in zip(axes.flat, wrong):
        with Image.open(pairs[i][0]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"true {classes[labels[i]]}\npred {classes[pred[i]]} ({probs[i, pred[i]]:.2f})", fontsize=9)
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle("Most confident mistakes")
    fig.tight_layout()
    save_fig(fig, path)
    return len(wrong)


def report(run, part: str, json_file: Path | None, batch_size: int, tta: str = "none") -> dict:
    """`evaluate` on a classifier: metrics + PNGs in the run dir, a table on screen.
    With test-time augmentation the files are named after it (eval_test_tta-flips.json),
    so they never replace the single-view ones that the deployed model matches."""
    from edgetune.models.tta import with_tta
    from edgetune.runtime.files import write_json
    from edgetune.tasks.classification.metrics import classification_metrics
    from edgetune.train.predict import predict

    model = with_tta(run.build_model(), tta)
    logits, labels = predict(model, run.task_impl.eval_loader(run.split.parts[part], run.spec, batch_size))
    m = classification_metrics(labels, logits, run.classes)
    m["tta"] = tta
    suffix = part if tta == "none" else f"{part}_tta-{tta}"
    m["predictions"] = [
        {"path": p, "label": int(y), "pred": int(k)} for (p, y), k in zip(run.split.parts[part], logits.argmax(1))
    ]
    views = "" if tta == "none" else f", test-time augmentation {tta}"
    plot_confusion(
        m["confusion_matrix"],
        run.classes,
        run.dir / f"confusion_{suffix}.png",
        f"{run.model_name} ({run.stage}), {part} split{views}",
    )
    shown = plot_mistakes(run.split.parts[part], logits, run.classes, run.dir / f"mistakes_{suffix}.png")
    m["files"] = {
        "confusion": str(run.dir / f"confusion_{suffix}.png"),
        "mistakes": str(run.dir / f"mistakes_{suffix}.png"),
    }
    write_json(run.dir / f"eval_{suffix}.json", m)
    if json_file:
        write_json(json_file, m)
    print_metrics(m, run.classes, f"{run.dir} ({run.model_name}, {run.stage}) on the {part} split{views}")
    log.console.print(f"{shown} most confident mistakes: {m['files']['mistakes']}")
    return m
