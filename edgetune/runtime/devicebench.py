"""Benchmark one artifact in this process and write the result as JSON.

    python -m edgetune.runtime.devicebench BUNDLE --out result.json [--threads N]
        [--batch 1,8] [--images FILE] [--frame 640x480] [--warmup 10] [--min-time 2] [--min-runs 50]

It is what `edgetune bench` runs for every bundle: in a fresh process on this
machine, or on the device over SSH. Torch-free: it needs numpy, OpenCV and the
bundle's runtime only (plus edgetune/runtime itself). The PyTorch baseline runs the
same `main` with its own opener (`edgetune.bench.torchbench`).

Progress goes to stdout as lines `@@progress {json}`, a failure as `@@error {json}`;
anything else is ordinary log output. The caller turns them into a progress bar.

`--images` is a list of image files (one path a line) or an uncompressed .tar of
them, read in order; the result then holds each image's result as its task sends
it (`TaskSession.to_json`; labels stay with the caller). A tar is read member by member in memory, never extracted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterator

from edgetune.runtime.machine import device_info, runtime_versions

PROGRESS = "@@progress "
ERROR = "@@error "
SCHEMA = 1
FRAME = "640x480"  # the end-to-end latency's frame: a VGA camera's
HEAVY_MODULES = ("torch", "timm", "nncf", "torchvision")


def emit(prefix: str, **data) -> None:
    print(prefix + json.dumps(data, default=str), flush=True)


class Reporter:
    """Progress lines for one phase, at most a few per second."""

    def __init__(self, phase: str, total: int | None = None, interval: float = 0.25):
        self.phase, self.total, self.interval = phase, total, interval
        self.last = 0.0
        emit(PROGRESS, phase=phase, done=0, total=total)

    def __call__(self, done: int, *_):
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            emit(PROGRESS, phase=self.phase, done=done, total=self.total)

    def finish(self, done: int) -> None:
        emit(PROGRESS, phase=self.phase, done=done, total=done, finished=True)


# --- the images -------------------------------------------------------------


def iter_images(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, encoded bytes) of each image in a .tar or a list file, in order."""
    if path.endswith(".tar"):
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile():  # links, dirs and devices are never followed
                    f = tar.extractfile(member)
                    yield member.name, f.read() if f else b""
    else:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield line.strip(), Path(line.strip()).read_bytes()


def count_images(path: str) -> int:
    if path.endswith(".tar"):
        with tarfile.open(path, "r:") as tar:
            return sum(1 for m in tar if m.isfile())
    return sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())


# --- the measurement ----------------------------------------------------------


def measure(session, spec, policy, batches: list[int], frame, images: str | None = None) -> dict:
    """Latency of the model call and of frame -> the task's result (preprocessing
    and decoding included), throughput per batch size, and the results of `images`
    (as the task sends them: `to_json`)."""
    import numpy as np

    from edgetune.runtime.preprocess import decode_image, preprocess
    from edgetune.runtime.tasks import as_task_session
    from edgetune.runtime.timing import summarize, throughput_fps, time_alternating, time_call

    session = as_task_session(session)

    def timed(phase: str, fn):
        rep = Reporter(phase)
        t = time_call(fn, policy, rep)
        rep.finish(len(t.samples_s))
        return t

    x1 = preprocess([frame], spec)
    # the model call and frame -> result in alternating blocks: their difference is
    # the preprocessing's (and decoding's) cost, not the machine's drift between two phases
    rep = Reporter("latency b1")  # the model call and end to end
    timings = time_alternating(
        {"model": lambda: session.run_outputs(x1), "e2e": lambda: session.predict_frames([frame])}, policy, progress=rep
    )
    model, e2e = timings["model"], timings["e2e"]
    rep.finish(len(model.samples_s) + len(e2e.samples_s))
    throughput = {"1": {"fps": throughput_fps(1, model), **summarize(model.samples_s)}}
    for b in batches:
        if b == 1:
            continue
        xb = np.repeat(x1, b, axis=0)
        t = timed(f"throughput b{b}", lambda: session.run_outputs(xb))
        throughput[str(b)] = {"fps": throughput_fps(b, t), **summarize(t.samples_s)}
    result = {
        "latency": {"model": model.stats(), "e2e": e2e.stats()},
        "throughput": throughput,
        "predictions": None,
        "inference_precision": getattr(session, "inference_precision", None),
    }
    if images:
        total = count_images(images)
        rep = Reporter("accuracy", total)
        predictions = []
        for i, (name, data) in enumerate(iter_images(images), 1):
            predictions.append(session.to_json(session.predict_frames([decode_image(data, name)])[0]))
            rep(i)
        rep.finish(len(predictions))
        result["predictions"] = predictions
    return result


def stage_label(stage: str | None, pruned: bool) -> str | None:
    """The results-row stage: float, pruned, ptq, qat, pruned+ptq, pruned+qat."""
    if stage in (None, "float", "pruned"):
        return "pruned" if pruned or stage == "pruned" else stage
    return f"pruned+{stage}" if pruned else stage


def bundle_info(bundle, precision: str | None = None, runtime: str | None = None) -> dict:
    """The facts about one artifact of a bundle that a results row needs."""
    from edgetune.runtime.tasks import session_class

    m = bundle.manifest
    model = m.get("model") or {}
    art = bundle.artifact(precision)
    return {
        "kind": "bundle",
        "path": str(bundle.root),
        "name": bundle.name,
        "model": model.get("backbone"),
        "stage": stage_label(model.get("stage"), bool(model.get("pruned"))),
        "target": bundle.target,
        "runtime": runtime or art.get("runtime", bundle.runtime),
        "precision": art.get("precision", precision or bundle.precision),
        "classes": list(bundle.classes),
        "task": bundle.task,
        "manifest": session_class(bundle.task).task_keys(m),
        "size_bytes": bundle.artifact_size(precision),
        "macs": model.get("macs"),
        "params": model.get("params"),
        "source_run": m.get("source_run"),
        "resize_dtype": bundle.spec.resize_dtype,
    }


def open_bundle(path: str, threads: int | None, precision: str | None = None, runtime: str | None = None):
    from edgetune.runtime.bundle import load_bundle

    bundle = load_bundle(path)
    session = bundle.open(threads=threads, precision=precision, runtime=runtime)
    return session, bundle.spec, bundle_info(bundle, precision, runtime)


# (artifact path, threads, precision, runtime) -> (session, spec, info)
Opener = Callable[..., tuple]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="devicebench", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default=None, help="which artifact of the bundle (default: its main one)")
    p.add_argument(
        "--runtime", default=None, help="run the artifact with another runtime (e.g. onnxruntime for a Jetson ONNX)"
    )
    p.add_argument("--batch", default="1", help="comma list of batch sizes")
    p.add_argument("--images", default=None)
    p.add_argument(
        "--frame", default=FRAME, help="WIDTHxHEIGHT of the uint8 frame the end-to-end latency starts from (a camera's)"
    )
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--min-runs", type=int, default=50)
    return p.parse_args(argv)


def main(argv=None, opener: Opener | None = None) -> int:
    args = parse_args(argv)
    try:
        import cv2  # noqa: F401
        import numpy as np  # noqa: F401  (checked first: the message says what to install)
    except ImportError as e:
        emit(
            ERROR,
            kind="missing",
            module=e.name,
            message=f"{e.name} is not installed in {sys.executable}: pip install numpy opencv-python-headless",
        )
        return 3
    from edgetune.errors import EdgetuneError
    from edgetune.runtime.preprocess import BadImageError
    from edgetune.runtime.timing import Policy, peak_rss_mb

    try:
        policy = Policy(args.warmup, args.min_time, args.min_runs)
        batches = sorted({int(b) for b in args.batch.split(",") if b.strip()})
        emit(PROGRESS, phase="load", done=0, total=None)
        t0 = time.perf_counter()
        session, spec, info = (opener or open_bundle)(args.artifact, args.threads, args.precision, args.runtime)
        load_s = time.perf_counter() - t0
        if callable(info):  # facts that take time to gather (MACs) stay out of load_s
            info = info()
        frame = camera_frame(args.frame, read_image_from(args.images) if args.images else None)
        result = measure(session, spec, policy, batches, frame, args.images)
        result["e2e_frame"] = args.frame
    except (EdgetuneError, BadImageError) as e:
        emit(ERROR, kind="usage", message=str(e))
        return 2
    except ImportError as e:
        emit(ERROR, kind="missing", module=e.name, message=f"{e.name} is not installed in {sys.executable}: {e}")
        return 3
    import edgetune

    out = {
        "schema": SCHEMA,
        "artifact": info,
        "threads": args.threads,
        "batches": batches,
        "policy": policy.to_dict(),
        "load_s": load_s,
        **result,
        "peak_rss_mb": peak_rss_mb(),
        "device": device_info(),
        "python": {
            "executable": sys.executable,
            "edgetune_from": str(Path(edgetune.__file__).parent),
            "heavy_modules_loaded": sorted(m for m in HEAVY_MODULES if m in sys.modules),
            "versions": runtime_versions(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from edgetune.runtime.files import write_json

    write_json(args.out, out)
    return 0


def camera_frame(size: str, image=None):
    """A uint8 BGR frame of `size` ("WIDTHxHEIGHT"): `image` scaled to it, or mid-gray."""
    import cv2
    import numpy as np

    try:
        w, h = (int(v) for v in size.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        from edgetune.errors import EdgetuneError

        raise EdgetuneError(f"--frame {size!r}: give the frame size as WIDTHxHEIGHT, e.g. 640x480.") from None
    if image is None:
        return np.full((h, w, 3), 128, np.uint8)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def read_image_from(images: str):
    """The first image of `images`, decoded: the frame the latency runs use."""
    from edgetune.runtime.preprocess import decode_image

    for name, data in iter_images(images):
        return decode_image(data, name)
    raise ValueError(f"{images}: no images")


if __name__ == "__main__":
    sys.exit(main())
