"""The inference loop: frames from the capture thread, each frame (or each ROI of
it) through the bundle's session, records out, alarms debounced, statistics kept.
Stops at the end of a file, after --max-frames, or on SIGINT/SIGTERM; whichever it
is, the outputs are flushed and closed and the summary is written."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from edgetune.camera.alarm import AlarmActions, AlarmRule, Alarms
from edgetune.camera.capture import Capture, FrameBuffer
from edgetune.camera.roi import Roi, check_rois
from edgetune.camera.sinks import AnnotatedVideo, Display, Rate, RecordWriter, draw
from edgetune.camera.source import open_source, parse_source
from edgetune.camera.stats import Stats, latency_summary
from edgetune.errors import EdgetuneError
from edgetune.runtime.files import write_json

log = logging.getLogger(__name__)


@dataclass
class InferOptions:
    source: str
    mode: str = "auto"  # auto: every for files and images, latest for cameras and streams
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    rois: list[Roi] = field(default_factory=list)
    alarms: list[AlarmRule] = field(default_factory=list)
    alarm_frames: int = 3
    on_alarm: str | None = None
    webhook: str | None = None
    out: str | None = "-"
    format: str | None = None
    video: str | None = None
    show: bool = False
    status_every: float = 10.0
    summary: str | None = None
    max_frames: int | None = None
    loop: bool = False
    queue_size: int = 8
    backoff: tuple[float, float] = (0.5, 10.0)
    save_flagged: str | None = None  # keep each frame the task flags (an anomalous part, ...) and its overlay here


class _Signals:
    """SIGINT/SIGTERM set `stop` instead of killing the process (main thread only)."""

    def __init__(self, stop: threading.Event):
        self.stop, self.name, self._old = stop, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.name = signal.Signals(signum).name
        self.stop.set()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_inference(
    session, classes: list[str], opts: InferOptions, stop: threading.Event | None = None, extra: dict | None = None
) -> dict:
    """Run the camera loop until the source ends or `stop` is set; return the summary.
    `session`: a bundle's task session (`Bundle.open`); a bare session is read as
    the default task's with `classes`."""
    from edgetune.runtime.tasks import as_task_session

    session = as_task_session(session, classes)
    stop = stop or threading.Event()
    spec = parse_source(opts.source)
    mode = opts.mode if opts.mode != "auto" else ("latest" if spec.live else "every")
    for rule in opts.alarms:
        session.check_alarm(rule)
    if opts.loop and spec.live:
        raise EdgetuneError(f"--loop replays files and image folders; '{opts.source}' is a live {spec.kind}.")

    def reopen():
        return open_source(spec, opts.width, opts.height, opts.fps)

    reader = reopen()
    size = getattr(reader, "size", None)
    if opts.rois and size and all(size):
        check_rois(opts.rois, *size, opts.source)
    log.info(
        "Source %s (%s%s), mode %s, %s on %s %s.",
        opts.source,
        spec.kind,
        f", {size[0]}x{size[1]}" if size and all(size) else "",
        mode,
        f"{len(opts.rois)} ROIs" if opts.rois else "whole frame",
        session.name,
        session.precision,
    )

    buffer = FrameBuffer(mode, opts.queue_size)
    prepare = _prepare_in_capture(session, opts.rois)
    capture = Capture(
        reader,
        reopen,
        buffer,
        stop,
        live=spec.live,
        loop=opts.loop,
        max_frames=opts.max_frames,
        backoff=opts.backoff,
        prepare=prepare,
    )
    # Opened before the loop so a bad path fails at once, not after the first frame.
    if opts.save_flagged:
        _make_folder(opts.save_flagged)
    writer = RecordWriter(opts.out, opts.format)
    video = AnnotatedVideo(opts.video, getattr(reader, "fps", None)) if opts.video else None
    display = Display() if opts.show else None
    actions = AlarmActions(opts.on_alarm, opts.webhook)
    alarms = Alarms(opts.alarms, opts.alarm_frames, actions)
    stats, rate = Stats(), Rate()
    started = datetime.now(timezone.utc)
    checked_size = tuple(size) if size and all(size) else None
    stopped_by, error, actions_wait = None, None, 0.0

    with _Signals(stop) as signals:
        capture.start()
        next_status = time.monotonic() + opts.status_every if opts.status_every > 0 else float("inf")
        try:
            while not stop.is_set():
                frame = buffer.get(timeout=0.2)
                if time.monotonic() >= next_status:
                    _status(stats, buffer, capture)
                    next_status = time.monotonic() + opts.status_every
                if frame is None:
                    if buffer.done:
                        break
                    continue
                h, w = frame.image.shape[:2]
                if opts.rois and checked_size != (w, h):
                    check_rois(opts.rois, w, h, frame.source)
                    checked_size = (w, h)
                labels, latencies, results = [], [], []
                for j, roi in enumerate(opts.rois or [None]):
                    result, ms = _predict(session, frame, j, roi)
                    record = {
                        "time": frame.time,
                        "frame": frame.index,
                        "source": frame.source,
                        "roi": roi.name if roi else None,
                        **session.record(result, (roi.x, roi.y) if roi else (0, 0)),
                        "latency_ms": round(ms, 3),
                        "alarm": None,
                    }
                    results.append((roi, result))
                    if opts.save_flagged and session.flagged(result):
                        record["saved"] = save_flagged(opts.save_flagged, session, frame, roi, result)
                    fired = alarms.check(session.alarm_values(result), record)
                    writer.write(record)
                    labels.append((roi, record["class"], record["score"], bool(fired)))
                    latencies.append(ms)
                stats.add(latencies)
                stats.alarms = alarms.count
                fps = rate.tick()
                if video or display:
                    annotated = draw(overlay(session, frame.image, results), labels, fps)
                    if video:
                        video.write(annotated)
                    if display:
                        display.show(annotated)
                        if display.quit:
                            stopped_by = "window closed"
                            break
        except BaseException as e:
            error = e
            raise
        finally:
            stats.stop()  # the inference period ends here; what follows is shutdown, reported apart
            stop.set()
            capture.join(timeout=10)
            if capture.error is not None and error is None:
                error = capture.error
            stopped_by = signals.name or stopped_by or _why(capture, opts, error)
            for closer in (
                writer.close,
                video.close if video else None,
                display.close if display else None,
                actions.close,
            ):
                if closer:
                    t0 = time.monotonic()
                    try:
                        closer()
                    except Exception as e:  # one failing output must not lose the others
                        log.error("Closing an output failed: %s", e)
                    if closer == actions.close:
                        actions_wait = time.monotonic() - t0
            shutdown = {
                "shutdown_seconds": round(time.monotonic() - stats.ended, 3),
                "alarm_actions_wait_seconds": round(actions_wait, 3),
                "alarm_actions_unfinished": actions.running,
            }
            summary = _summary(
                opts,
                spec,
                mode,
                session,
                started,
                stats,
                buffer,
                capture,
                writer,
                video,
                alarms,
                stopped_by,
                {**(extra or {}), **shutdown},
            )
            if opts.summary:
                write_json(opts.summary, summary)
    if capture.error is not None:
        raise capture.error
    return summary


def _prepare_in_capture(session, rois: list[Roi]):
    """Where a session's `run_frames` is exactly the manifest's preprocessing followed
    by `run` (every runtime's session), the preprocessing can run in the capture
    thread, overlapped with the model. Sessions with their own `run_frames` (the
    PyTorch baseline) get raw frames through it instead."""
    from edgetune.runtime.backends import ArraySession
    from edgetune.runtime.preprocess import preprocess
    from edgetune.runtime.tasks.base import TaskSession

    inner = session.session if isinstance(session, TaskSession) else session
    if not isinstance(inner, ArraySession) or type(inner).run_frames is not ArraySession.run_frames:
        return None
    spec = session.spec

    def prepare(image):
        h, w = image.shape[:2]
        if not all(roi.fits(w, h) for roi in rois):
            return None  # the inference thread reports the ROI that does not fit
        inputs = []
        for roi in rois or [None]:
            t0 = time.perf_counter()
            x = preprocess([roi.crop(image) if roi else image], spec)
            inputs.append((x, (time.perf_counter() - t0) * 1000.0))
        return inputs

    return prepare


def _predict(session, frame, j: int, roi: Roi | None) -> tuple[object, float]:
    """The task's result for a frame (or its j-th ROI) and the ms it took (counting
    preprocessing done in the capture thread)."""
    t0 = time.perf_counter()
    x, prepare_ms = frame.inputs[j] if frame.inputs is not None else (None, 0.0)
    image = roi.crop(frame.image) if roi else frame.image
    result = session.predict(x, [image.shape[:2]])[0] if x is not None else session.predict_frames([image])[0]
    return result, (time.perf_counter() - t0) * 1000.0 + prepare_ms


def overlay(session, image: np.ndarray, results: list) -> np.ndarray:
    """The task's overlay (a heat map, boxes, ...) of each result on its ROI (or the whole frame)."""
    out = image
    for roi, result in results:
        if roi is None:
            out = session.draw(out, result)
        else:
            out = out.copy() if out is image else out
            out[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w] = session.draw(roi.crop(out), result)
    return out


def _make_folder(folder: str) -> None:
    from pathlib import Path

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgetuneError(
            f"--save-flagged (--save-anomalies) {folder}: cannot make that folder ({e.strerror or e}). Give a folder "
            "that can be written."
        ) from None


def save_flagged(folder: str, session, frame, roi: Roi | None, result) -> str:
    """FOLDER/frame-NNNNNN[-ROI].png (the frame or ROI as captured) and a copy with
    the task's overlay (...-map.png), written atomically; returns the first's path."""
    from pathlib import Path

    import cv2

    from edgetune.runtime.files import write_bytes

    image = roi.crop(frame.image) if roi else frame.image
    stem = Path(folder) / f"frame-{frame.index:06d}{'-' + roi.name if roi else ''}"  # the folder: made before the loop
    for path, img in (
        (stem.with_name(stem.name + ".png"), image),
        (stem.with_name(stem.name + "-map.png"), session.draw(image, result)),
    ):
        ok, data = cv2.imencode(".png", img)
        if ok:
            write_bytes(path, data.tobytes())
    return str(stem.with_name(stem.name + ".png"))


def _status(stats: Stats, buffer: FrameBuffer, capture: Capture) -> None:
    i = stats.interval()
    p50 = f"{i['p50_ms']:.2f} ms" if i["p50_ms"] is not None else "-"
    log.info(
        "%.0f s | %.1f FPS | p50 %s | frames %d | dropped %d | corrupt %d | alarms %d",
        stats.elapsed(),
        i["fps"],
        p50,
        stats.frames,
        buffer.dropped,
        capture.stats.corrupt,
        stats.alarms,
    )


def _why(capture: Capture, opts: InferOptions, error) -> str:
    if error is not None:
        return f"error: {type(error).__name__}"
    if opts.max_frames is not None and capture.stats.read >= opts.max_frames:
        return "max-frames"
    return "end of source"


def _summary(
    opts,
    spec,
    mode,
    session,
    started,
    stats: Stats,
    buffer,
    capture: Capture,
    writer,
    video,
    alarms: Alarms,
    stopped_by,
    extra,
) -> dict:
    seconds = stats.elapsed()
    return {
        **(extra or {}),
        "source": opts.source,
        "source_kind": spec.kind,
        "mode": mode,
        "runtime": session.name,
        "precision": session.precision,
        "rois": [r.name for r in opts.rois],
        "started": started.isoformat(timespec="milliseconds"),
        "ended": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "seconds": round(seconds, 3),  # of inference: the shutdown after it is in shutdown_seconds
        "stopped_by": stopped_by,
        "frames_read": capture.stats.read,
        "frames_inferred": stats.frames,
        "records": writer.count,
        "fps": round(stats.frames / seconds, 3) if seconds > 0 else 0.0,
        "latency_ms": latency_summary(stats.latency),
        "dropped": buffer.dropped,
        "unprocessed": capture.stats.read - stats.frames - buffer.dropped,
        "corrupt": capture.stats.corrupt,
        "truncated": capture.stats.truncated,
        "reconnects": capture.stats.reconnects,
        "gaps": capture.stats.gaps,
        "loops": capture.stats.loops,
        "alarms": alarms.count,
        "alarm_events": alarms.events,
        "alarm_actions": {"done": alarms.actions.done, "failed": alarms.actions.failures},
        "outputs": {
            "records": str(writer.path) if writer.path else "stdout",
            "format": writer.format,
            "video": str(video.path) if video else None,
            "summary": str(opts.summary) if opts.summary else None,
        },
    }
