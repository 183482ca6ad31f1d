"""Two detect_neu.py runs on the same test images, paired: is a recipe change
better than the test split's sampling alone would make it look? Each run's bundle
(cpu by default: ONNX Runtime) predicts the test images once; mAP@0.5 and
mAP@0.5:0.95 of each, their 95% bootstrap intervals over images, and the interval
of the difference (B minus A), both runs scored on the same resampled images.

The interval covers the 270 test images' sampling only, not a run's own spread
(another day's CPU gives another model: about 2 points of mAP@0.5 between runs of
one recipe, docs/detection.md). A difference whose interval excludes zero is a
difference on images like these for these two models; whether the recipe change
makes it needs repeated runs.

    python benchmarks/detect_paired.py benchmarks/work/detect_neu benchmarks/work/detect_neu_mosaic \\
        --results benchmarks/results/detect_paired_mosaic_close --labels recipe "mosaic, QAT without it"

Writes RESULTS.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, today  # noqa: E402

RESAMPLES = 1000


def predictions(work: Path, target: str, precision: str, threads: int):
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import read_image

    bundle = work / "build" / f"bundle-{target}"
    if not (work / "finetune" / "run.json").exists() or not bundle.is_dir():
        raise SystemExit(f"{work} holds no finished detect_neu.py run ({bundle} is missing): pass a --work folder.")
    run = load_run(work / "finetune")
    pairs = run.split.parts["test"]
    session = load_bundle(bundle).open(precision=precision, threads=threads)
    frames = [read_image(p) for p, _ in pairs]
    results = [r for i in range(0, len(frames), 16) for r in session.predict_frames(frames[i : i + 16])]
    return run, [str(p) for p, _ in pairs], results, [t for _, t in pairs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="a detect_neu.py --work folder (the reference)")
    p.add_argument("b", type=Path, help="another, on the same split")
    p.add_argument("--target", default="cpu")
    p.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, required=True, help="RESULTS.json and RESULTS.md are written")
    p.add_argument("--labels", nargs=2, metavar=("A", "B"), help="what each run is (default: the folders' names)")
    args = p.parse_args()
    from edgetune.runtime.files import write_json, write_text
    from edgetune.tasks.detect.metrics import Matched
    from edgetune.tasks.gate import paired_interval

    run_a, paths_a, res_a, targets = predictions(args.a, args.target, args.precision, args.threads)
    run_b, paths_b, res_b, _ = predictions(args.b, args.target, args.precision, args.threads)
    if paths_a != paths_b:
        raise SystemExit(f"{args.a} and {args.b} were tested on different images: pair runs of one split.")
    classes = len(run_a.classes)
    ma, mb = Matched(res_a, targets, classes), Matched(res_b, targets, classes)
    n = ma.n

    def map50_95(m, w=None):
        ap = m.ap(w)
        return float(np.nanmean(ap)) if np.isfinite(ap).any() else None

    metrics = {"map50": lambda m, w=None: m.map50(w), "map50_95": map50_95}
    rows = []
    for key, f in metrics.items():
        a, b = f(ma), f(mb)

        def weights(i):
            return np.bincount(i, minlength=n)

        ci_a = paired_interval(lambda i: f(ma, weights(i)), n, RESAMPLES)
        ci_b = paired_interval(lambda i: f(mb, weights(i)), n, RESAMPLES)
        ci_d = paired_interval(lambda i: f(mb, weights(i)) - f(ma, weights(i)), n, RESAMPLES)
        rows.append(
            {
                "metric": key,
                "a": a,
                "a_ci95": f"{ci_a[0] / 100:.3f}-{ci_a[1] / 100:.3f}",
                "b": b,
                "b_ci95": f"{ci_b[0] / 100:.3f}-{ci_b[1] / 100:.3f}",
                "b_minus_a_points": (b - a) * 100,
                "difference_ci95_points": f"{ci_d[0]:+.2f} to {ci_d[1]:+.2f}",
            }
        )
    label_a, label_b = args.labels or (args.a.name, args.b.name)
    out = {
        "a": str(args.a),
        "b": str(args.b),
        "labels": [label_a, label_b],
        "target": args.target,
        "precision": args.precision,
        "images": n,
        "resamples": RESAMPLES,
        "rows": rows,
        "machine": machine(),
        "date": today(),
    }
    write_json(args.results.with_suffix(".json"), out)
    lines = [
        f"# {label_b} against {label_a} on NEU-DET's test split, paired",
        "",
        f"A: {label_a} (`{args.a}`), B: {label_b} (`{args.b}`); the {args.target} bundles' {args.precision} "
        f"artifacts on the same {n} test images; 95% percentile intervals over {RESAMPLES} bootstrap resamples of "
        "the images (the difference scored on the same resample for both). They cover the test images' sampling, not "
        "a run's own spread.",
        "",
        *markdown_table(rows, list(rows[0])),
        "",
        f"Machine: {machine()}, {today()}. `python benchmarks/detect_paired.py {args.a} {args.b} "
        f"--results {args.results}`.",
    ]
    write_text(args.results.with_suffix(".md"), "\n".join(lines) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
