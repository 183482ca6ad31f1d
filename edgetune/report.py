"""What people look at: metrics tables (rich), a confusion-matrix PNG and a
gallery of the most confident mistakes (what to look at before adding data), and
the `evaluate` command that writes them. For an anomaly run: a histogram of
normal vs anomalous scores and a gallery of the most anomalous images and the
missed anomalies with their heat maps. The JSON beside them is for machines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from edgetune import log
from edgetune.metrics import classification_metrics, softmax


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
    _save_fig(fig, path)


def plot_mistakes(
    pairs: list[tuple[str, int]], logits: np.ndarray, classes: list[str], path: Path, top: int = 16
) -> int:
    """Gallery of the most confident mistakes; returns how many are shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    probs = softmax(logits)
    pred = probs.argmax(1)
    labels = np.array([y for _, y in pairs])
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:top]
    cols = 4
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        with Image.open(pairs[i][0]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"true {classes[labels[i]]}\npred {classes[pred[i]]} ({probs[i, pred[i]]:.2f})", fontsize=9)
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle("Most confident mistakes")
    fig.tight_layout()
    _save_fig(fig, path)
    return len(wrong)


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from edgetune.runtime.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def evaluate_run(
    run_dir: Path, part: str, json_file: Path | None, batch_size: int, tta: str = "none", data: str | None = None
) -> dict:
    """The `evaluate` command: metrics + PNGs in the run dir, a table on screen.
    With test-time augmentation the files are named after it (eval_test_tta-flips.json),
    so they never replace the single-view ones that the deployed model matches."""
    from edgetune.models.tta import with_tta
    from edgetune.run import load_run
    from edgetune.runtime.files import write_json
    from edgetune.train.evaluate import predict_split

    run = load_run(run_dir, data)
    if run.task == "anomaly":
        if tta != "none":
            from edgetune.errors import EdgetuneError

            raise EdgetuneError(
                f"--tta {tta}: test-time augmentation applies to classifiers; {run_dir} is an anomaly run."
            )
        return evaluate_anomaly_run(run, part, json_file, batch_size)
    model = with_tta(run.build_model(), tta)
    logits, labels = predict_split(model, run.split, run.spec, part, batch_size)
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


# --- anomaly runs -----------------------------------------------------------


def plot_score_histogram(scores: np.ndarray, anomalous: np.ndarray, path: Path, title: str) -> None:
    """Normal vs anomalous scores, and the threshold (0.5)."""
    import matplotlib

    from edgetune.runtime.anomaly import THRESHOLD

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(min(scores.min(), 0.0), max(scores.max(), 1.0), 40)
    ax.hist(scores[~anomalous], bins=bins, alpha=0.6, label=f"normal ({int((~anomalous).sum())})", color="tab:green")
    ax.hist(scores[anomalous], bins=bins, alpha=0.6, label=f"anomalous ({int(anomalous.sum())})", color="tab:red")
    ax.axvline(THRESHOLD, color="black", linestyle="--", label="threshold")
    ax.set_xlabel("normalised anomaly score")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    _save_fig(fig, path)


def plot_anomaly_gallery(
    paths: list[str], scores: np.ndarray, maps: np.ndarray, anomalous: np.ndarray, path: Path, top: int = 8
) -> dict:
    """Top row(s): the most anomalous images; below: the missed anomalies (lowest
    scores first), each with its heat map overlaid. Returns how many of each."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetune.runtime.anomaly import THRESHOLD, heat_overlay
    from edgetune.runtime.preprocess import read_image

    most = list(np.argsort(-scores)[:top])
    missed = [i for i in np.argsort(scores) if anomalous[i] and scores[i] <= THRESHOLD][:top]
    groups = [("most anomalous", most), ("missed anomalies", missed)]
    cols = 4
    rows = sum(max(1, int(np.ceil(len(g) / cols))) for _, g in groups)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    r = 0
    for name, idx in groups:
        n_rows = max(1, int(np.ceil(len(idx) / cols)))
        cells = axes[r : r + n_rows].flat
        if not idx:
            next(iter(cells)).text(0.5, 0.5, f"no {name}", ha="center", va="center")
        for ax, i in zip(cells, idx):
            img = heat_overlay(read_image(paths[i]), maps[i])
            ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            ax.set_title(f"{'anomalous' if anomalous[i] else 'normal'} part, score {scores[i]:.2f}", fontsize=9)
        r += n_rows
    fig.suptitle("Most anomalous test images (top) and missed anomalies (bottom), heat maps overlaid")
    fig.tight_layout()
    _save_fig(fig, path)
    return {"most_anomalous": len(most), "missed": len(missed)}


def evaluate_anomaly_run(run, part: str, json_file: Path | None, batch_size: int) -> dict:
    """`evaluate` on an anomaly run: image AUROC, AUPR, F1 and false-alarm rate at
    the threshold, a histogram of normal vs anomalous scores, and a gallery of the
    most anomalous images and of the missed anomalies with their heat maps."""
    from edgetune.metrics import anomaly_metrics
    from edgetune.runtime.files import write_json
    from edgetune.train.anomaly import anomalous_labels, load_patchcore, run_norm, score_images

    norm = run_norm(run)
    pairs = run.split.parts[part]
    paths = [p for p, _ in pairs]
    raw, raw_maps = score_images(load_patchcore(run), paths, run.spec, batch_size, f"{part} scores")
    scores, maps = norm.apply(raw), norm.apply(raw_maps)
    y = anomalous_labels(pairs)
    m = anomaly_metrics(y, scores)
    m["threshold_raw"], m["rule"] = norm.threshold_raw, norm.rule
    m["predictions"] = [
        {"path": p, "anomalous": bool(a), "score": round(float(s), 5)} for p, a, s in zip(paths, y, scores)
    ]
    files = {"histogram": run.dir / f"scores_{part}.png", "gallery": run.dir / f"gallery_{part}.png"}
    plot_score_histogram(
        scores,
        y,
        files["histogram"],
        f"{run.model_name} PatchCore, {part} split: AUROC "
        + (f"{m['auroc']:.4f}" if m["auroc"] is not None else "-")
        + f", F1 {m['f1']:.3f}",
    )
    shown = plot_anomaly_gallery(paths, scores, maps, y, files["gallery"])
    m["files"] = {k: str(v) for k, v in files.items()}
    write_json(run.dir / f"eval_{part}.json", m)
    if json_file:
        write_json(json_file, m)
    c = log.console
    c.print(
        f"{run.dir} ({run.model_name} PatchCore) on the {part} split: {m['n']} images, {m['n_anomalous']} anomalous"
    )
    c.print(
        f"  image AUROC {m['auroc'] if m['auroc'] is None else format(m['auroc'], '.4f')}, AUPR "
        f"{m['aupr'] if m['aupr'] is None else format(m['aupr'], '.4f')}"
    )
    c.print(
        f"  at the threshold (raw {norm.threshold_raw:.5g}; {norm.rule}): F1 {m['f1']:.4f}, precision {m['precision']:.4f}, "
        f"recall {m['recall'] if m['recall'] is None else format(m['recall'], '.4f')}, false-alarm rate "
        f"{m['false_alarm_rate'] if m['false_alarm_rate'] is None else format(m['false_alarm_rate'], '.2%')}"
    )
    c.print(
        f"  score histogram: {files['histogram']}; gallery ({shown['most_anomalous']} most anomalous, {shown['missed']} missed): {files['gallery']}"
    )
    return m
