"""Camera pipeline throughput against the model alone.

    python benchmarks/infer_throughput.py BUNDLE [--threads 1] [--frames 300] [--rounds 2]

The whole `edgetune infer` pipeline (capture thread reading and decoding a 640x480
MJPG video, preprocessing, the bundle's session, a JSONL record per frame) in
`--mode every`, against the model-only batch-1 throughput that `edgetune bench`
measures (the timing harness, `session.run` on one preprocessed frame, as in
`edgetune.runtime.devicebench.measure`) on the same session: same bundle, same
threads. Many short rounds alternate model / pipeline so load from other processes
on a shared machine hits both alike; the ratio is of the totals. The goal is
pipeline >= 90% of model-only.

Each round also times end to end on one frame (`session.run_frames`: a uint8
640x480 frame -> logits, preprocessing included, as `edgetune bench`'s e2e column)
against the model call; the goal is e2e p50 <= model p50 + 0.5 ms.

Writes its row into benchmarks/results/infer_throughput.json (one row per model,
input size, runtime, precision and threads) and the .md table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, today, write_table  # noqa: E402

from edgetune.camera import InferOptions, run_inference  # noqa: E402
from edgetune.camera.source import open_source, parse_source  # noqa: E402
from edgetune.runtime.bundle import load_bundle  # noqa: E402
from edgetune.runtime.devicebench import bundle_info  # noqa: E402
from edgetune.runtime.files import read_json, write_json  # noqa: E402
from edgetune.runtime.preprocess import preprocess  # noqa: E402
from edgetune.runtime.timing import Policy, summarize, throughput_fps, time_call  # noqa: E402

GOAL = 0.90
E2E_GOAL_MS = 0.5  # end to end (frame -> logits) at most this much over the model call, p50


def line_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames: a textured bright part on a darker belt, some with a crack."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        img = rng.normal(70, 12, (height, width)).clip(0, 255).astype(np.uint8)
        x0 = 60 + (i * 7) % 80
        cv2.rectangle(img, (x0, 60), (x0 + 400, 420), 180, -1)
        img = cv2.GaussianBlur(img, (5, 5), 1.5)
        if i % 3 == 0:
            cv2.line(img, (x0 + 20, 100), (x0 + 380, 380), 40, 4)
        frames.append(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    return frames


def write_video(path: Path, frames: list[np.ndarray], total: int, fps: float = 30.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write MJPG video to {path}")
    for i in range(total):
        writer.write(frames[i % len(frames)])
    writer.release()
    return path


def decode_fps(video: Path) -> float:
    """Capture alone: the source reader the pipeline uses, nothing else."""
    reader = open_source(parse_source(str(video)))
    n, t0 = 0, time.perf_counter()
    while reader.read() is not None:
        n += 1
    reader.close()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="inference threads for both measurements (default 1: on a small machine the capture thread needs a core)",
    )
    p.add_argument("--frames", type=int, default=60, help="frames per pipeline round")
    p.add_argument("--size", default="640x480")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of model-only timing per round")
    p.add_argument("--out", type=Path, default=RESULTS / "infer_throughput.json")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    bundle = load_bundle(args.bundle)
    session = bundle.open(threads=args.threads)
    info = bundle_info(bundle)
    frames = line_frames(30, width, height)
    x = preprocess([frames[0]], bundle.spec)
    session.run(x)  # first-call setup outside both measurements
    model_s, model_n, pipe_s, pipe_n, samples, ratios, e2e = 0.0, 0, 0.0, 0, [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / f"line_{width}x{height}.avi", frames, args.frames)
        capture_fps = decode_fps(video)
        for r in range(args.rounds):
            t = time_call(lambda: session.run(x), Policy(warmup=3 if r else 10, min_time_s=args.min_time, min_runs=20))
            e2e += time_call(
                lambda: session.run_frames([frames[0]]), Policy(warmup=3, min_time_s=args.min_time, min_runs=20)
            ).samples_s
            opts = InferOptions(str(video), mode="every", out=str(Path(tmp) / "records.jsonl"), status_every=0)
            summary = run_inference(session, bundle.classes, opts)
            assert summary["frames_inferred"] == args.frames, summary
            model_s, model_n, samples = model_s + t.total_s, model_n + len(t.samples_s), samples + t.samples_s
            pipe_s, pipe_n = pipe_s + summary["seconds"], pipe_n + summary["frames_inferred"]
            ratios.append(summary["fps"] / throughput_fps(1, t))
            print(
                f"round {r + 1}: model-only {throughput_fps(1, t):.1f} FPS, pipeline {summary['fps']:.1f} FPS -> "
                f"{ratios[-1]:.1%}",
                flush=True,
            )
    model_fps, pipeline_fps = model_n / model_s, pipe_n / pipe_s
    ratio = pipeline_fps / model_fps
    stats = summarize(samples)
    e2e_p50 = summarize(e2e)["p50_ms"]
    row = {
        "dataset": f"synthetic {width}x{height} MJPG",
        "model": info["model"],
        "stage": info["stage"],
        "runtime": info["runtime"],
        "precision": info["precision"],
        "threads": args.threads,
        "batch": 1,
        "input": "x".join(map(str, bundle.spec.size)),
        "rounds": args.rounds,
        "frames": args.rounds * args.frames,
        "model_fps": round(model_fps, 1),
        "pipeline_fps": round(pipeline_fps, 1),
        "ratio": round(ratio, 3),
        "meets_goal": ratio >= GOAL,
        "ratio_median_round": round(statistics.median(ratios), 3),
        "capture_fps": round(capture_fps, 1),
        "latency_ms_p50": round(stats["p50_ms"], 3),
        "latency_ms_p90": round(stats["p90_ms"], 3),
        "latency_ms_p99": round(stats["p99_ms"], 3),
        "throughput_fps": round(pipeline_fps, 1),
        "bundle": info["name"],
        "machine": machine(),
        "date": today(),
        "e2e_ms_p50": round(e2e_p50, 3),
        "preprocess_ms": round(e2e_p50 - stats["p50_ms"], 3),
        "meets_e2e_goal": e2e_p50 - stats["p50_ms"] <= E2E_GOAL_MS,
        "inference_precision": getattr(session, "inference_precision", None),
        "resize_dtype": bundle.spec.resize_dtype,
    }
    print(
        f"pipeline {pipeline_fps:.1f} FPS / model-only {model_fps:.1f} FPS = {ratio:.1%} (goal >= {GOAL:.0%}; "
        f"median round {row['ratio_median_round']:.1%}; capture alone {capture_fps:.0f} FPS) on {row['machine']}"
    )
    print(
        f"end to end p50 {e2e_p50:.3f} ms = model {stats['p50_ms']:.3f} ms {e2e_p50 - stats['p50_ms']:+.3f} ms "
        f"(goal <= +{E2E_GOAL_MS} ms: {'met' if row['meets_e2e_goal'] else 'NOT met'})"
    )
    # One row per bundle/threads: a rerun replaces its row and keeps the others.
    key = ("model", "input", "runtime", "precision", "threads")
    old = read_json(args.out) if args.out.exists() else []
    rows = [r for r in old if tuple(r.get(k) for k in key) != tuple(row[k] for k in key)] + [row]
    write_json(args.out, rows)
    write_table(
        rows,
        [
            "model",
            "input",
            "runtime",
            "precision",
            "threads",
            "model_fps",
            "pipeline_fps",
            "ratio",
            "ratio_median_round",
            "capture_fps",
            "latency_ms_p50",
            "e2e_ms_p50",
            "preprocess_ms",
            "resize_dtype",
        ],
        args.out.with_suffix(".md"),
        "Camera pipeline vs model-only throughput (batch 1)",
        f"Pipeline: capture thread (decode {width}x{height} MJPG + preprocessing) overlapped with inference, "
        f"JSONL records, --mode every. Model-only: the timing harness on the same session. Goal >= {GOAL:.0%}. "
        "The pipeline runs two busy threads where model-only runs one: on a machine whose cores are "
        "taken by other work it gets a smaller share of CPU, so measure on an otherwise idle device. "
        "A model faster than decoding a frame (capture_fps) is capture-bound. "
        f"e2e: one {width}x{height} uint8 frame -> logits in the session (preprocessing included), p50; "
        f"preprocess_ms = e2e p50 - model p50, goal <= {E2E_GOAL_MS} ms.",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
