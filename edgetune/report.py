"""Readable tables for people (rich); the JSON beside them is for machines."""

from __future__ import annotations

from rich.table import Table

from edgetune import log


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
