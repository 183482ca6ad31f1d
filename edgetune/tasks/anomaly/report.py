"""What people look at for an anomaly detector: a histogram of normal vs
anomalous scores and a gallery of the most anomalous images and the missed
anomalies with their heat maps; the metrics as JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune import log
from edgetune.tasks.figures import save_fig


def plot_score_histogram(scores: np.ndarray, anomalous: np.ndarray, path: Path, title: str) -> None:
    """Normal vs anomalous scores, and the threshold (0.5)."""
    import matplotlib

    from edgetune.runtime.tasks.anomaly import THRESHOLD

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
    save_fig(fig, path)


def plot_anomaly_gallery(
    paths: list[str],
    scores: np.ndarray,
    maps: np.ndarray,
    anomalous: np.ndarray,
    path: Path,
    top: int = 8,
    masks: np.ndarray | None = None,
) -> dict:
    """Top row(s): the most anomalous images; below: the missed anomalies (lowest
    scores first), each with its heat map overlaid, and the true defect mask
    beside it where the data set has masks. Returns how many of each."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetune.runtime.preprocess import read_image
    from edgetune.runtime.tasks.anomaly import THRESHOLD, heat_overlay

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
            if masks is not None:  # the true mask, white on black, to the right of the map
                truth = cv2.resize(masks[i] * 255, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
                img = np.hstack([img, np.full((img.shape[0], 4, 3), 128, np.uint8), cv2.merge([truth] * 3)])
            ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            ax.set_title(f"{'anomalous' if anomalous[i] else 'normal'} part, score {scores[i]:.2f}", fontsize=9)
        r += n_rows
    fig.suptitle(
        "Most anomalous test images (top) and missed anomalies (bottom), heat maps overlaid"
        + (", true masks beside" if masks is not None else "")
    )
    fig.tight_layout()
    save_fig(fig, path)
    return {"most_anomalous": len(most), "missed": len(missed), "true_masks": masks is not None}


def report(run, part: str, json_file: Path | None, batch_size: int, tta: str = "none") -> dict:
    """`evaluate` on an anomaly run: image AUROC, AUPR, F1 and false-alarm rate at
    the threshold, a histogram of normal vs anomalous scores, and a gallery of the
    most anomalous images and of the missed anomalies with their heat maps."""
    from edgetune.runtime.files import write_json
    from edgetune.tasks.anomaly.data import truth_masks
    from edgetune.tasks.anomaly.fit import anomalous_labels, load_patchcore, run_norm, score_images
    from edgetune.tasks.anomaly.metrics import anomaly_metrics, pixel_metrics

    norm = run_norm(run)
    pairs = run.split.parts[part]
    paths = [p for p, _ in pairs]
    raw, raw_maps = score_images(load_patchcore(run), paths, run.spec, batch_size, f"{part} scores")
    scores, maps = norm.apply(raw), norm.apply(raw_maps)
    y = anomalous_labels(pairs)
    m = anomaly_metrics(y, scores)
    m["threshold_raw"], m["rule"] = norm.threshold_raw, norm.rule
    masks = truth_masks(paths, y, tuple(run.spec.size))
    if masks is not None:
        m.update(pixel_metrics(maps, masks))
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
    shown = plot_anomaly_gallery(paths, scores, maps, y, files["gallery"], masks=masks)
    m["files"], m["gallery"] = {k: str(v) for k, v in files.items()}, shown
    write_json(run.dir / f"eval_{part}.json", m)
    if json_file:
        write_json(json_file, m)
    c = log.console
    c.print(
        f"{run.dir} ({run.model_name} PatchCore) on the {part} split: {m['n']} images, {m['n_anomalous']} anomalous"
    )
    if m["auroc"] is None:
        c.print(
            "  image AUROC: needs anomalous images, and this split holds none (good parts alone); the false-alarm "
            "rate below is what the good parts tell"
        )
    else:
        c.print(f"  image AUROC {m['auroc']:.4f}, AUPR {m['aupr']:.4f}")
    if m.get("pixel_auroc") is not None:
        c.print(
            f"  against the true masks: pixel AUROC {m['pixel_auroc']:.4f}, PRO {m['pro']:.4f} ({m['regions']} defect "
            "regions; per-region overlap up to 30% false-positive pixels)"
        )
    c.print(
        f"  at the threshold (raw {norm.threshold_raw:.5g}; {norm.rule}): F1 {m['f1']:.4f}, precision "
        f"{m['precision']:.4f}, recall {m['recall'] if m['recall'] is None else format(m['recall'], '.4f')}, "
        "false-alarm rate "
        f"{m['false_alarm_rate'] if m['false_alarm_rate'] is None else format(m['false_alarm_rate'], '.2%')}"
    )
    c.print(
        f"  score histogram: {files['histogram']}; gallery ({shown['most_anomalous']} most anomalous, "
        f"{shown['missed']} missed): {files['gallery']}"
    )
    return m
