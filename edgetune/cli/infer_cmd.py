"""`infer`: a bundle on a camera, stream, video file or image folder. Runs on the
device with the runtime extra alone: this module and what it imports never touch
torch."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.errors import EdgetuneError


class RoiType(click.ParamType):
    """`NAME=x,y,w,h`, or (from YAML) a mapping NAME: "x,y,w,h"."""

    name = "NAME=x,y,w,h"

    def convert(self, value, param, ctx):
        from edgetune.camera.roi import parse_rois

        try:
            return parse_rois(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class AlarmType(click.ParamType):
    name = "CLASS:THRESHOLD"

    def convert(self, value, param, ctx):
        from edgetune.camera.alarm import AlarmRule, parse_alarm

        if isinstance(value, AlarmRule):
            return value
        try:
            return parse_alarm(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--source",
    required=True,
    help="Camera index (0), device (/dev/video0), video file, rtsp:// or http:// URL, or image directory or glob "
    "('imgs/*.png').",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "latest", "every"]),
    default="auto",
    show_default=True,
    help="latest: drop stale frames to stay real-time; every: process every frame. auto: every for files and images, "
    "latest for cameras and streams.",
)
@click.option("--width", type=click.IntRange(1), help="Camera resolution to request (width).")
@click.option("--height", type=click.IntRange(1), help="Camera resolution to request (height).")
@click.option("--fps", type=click.FloatRange(0, min_open=True), help="Camera frame rate to request.")
@click.option(
    "--roi",
    multiple=True,
    type=RoiType(),
    help="Named region NAME=x,y,w,h (pixels), classified on its own; repeat for several. In the config: a list, or a "
    "mapping NAME: x,y,w,h.",
)
@click.option(
    "--alarm",
    multiple=True,
    type=AlarmType(),
    help="Alarm when CLASS's score is >= THRESHOLD on --alarm-frames consecutive frames, e.g. defective:0.8; "
    "repeatable.",
)
@click.option(
    "--alarm-frames",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Consecutive frames (per ROI) an alarm needs: debounces one-frame flickers.",
)
@click.option(
    "--on-alarm",
    help="Command to run on each alarm, with the record as JSON on stdin (e.g. ./stop_line.sh). A failure is logged; "
    "inference goes on.",
)
@click.option("--webhook", help="URL to POST each alarm's record to as JSON.")
@click.option(
    "--out",
    default="-",
    show_default=True,
    help="Records file, appended to: .jsonl or .csv; '-' writes JSONL to stdout.",
)
@click.option(
    "--format",
    type=click.Choice(["jsonl", "csv"]),
    help="Records format (default: from --out's extension, else jsonl).",
)
@click.option(
    "--video",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write an annotated video (.mp4, .avi or .mkv) with label, score and FPS.",
)
@click.option(
    "--show", is_flag=True, help="Show the annotated frames in a window (where a display exists; q or Esc stops)."
)
@click.option(
    "--status-every",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds between status lines (FPS, p50 latency, dropped frames, alarms); 0: none.",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Summary JSON to write at the end (default: beside --out as NAME.summary.json).",
)
@click.option("--max-frames", type=click.IntRange(1), help="Stop after this many frames.")
@click.option(
    "--loop", is_flag=True, help="Replay a video file or image folder from the start when it ends (soak tests, demos)."
)
@click.option("--threads", type=click.IntRange(1), help="Inference threads (default: the runtime's).")
@click.option(
    "--precision", help="Ask the bundle's runtime for another precision where it has one (e.g. fp16 on TensorRT)."
)
@click.option(
    "--queue-size",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Frames buffered between capture and inference in --mode every.",
)
@click.option(
    "--save-flagged",
    "--save-anomalies",
    "save_flagged",
    type=click.Path(file_okay=False),
    help="Keep each frame (or ROI) the bundle's task flags (an anomalous part, ...) and a copy with its overlay (the "
    "heat map, ...) in this folder, for review.",
)
def infer(bundle: Path, **o):
    """Run BUNDLE on frames from a camera, stream, video or image folder.

    One record per frame (and ROI): time, frame index, source, class, score, latency,
    and what the bundle's task adds (an anomaly detector's normalised score, 0.5 =
    the threshold, and `anomalous`, on which `--alarm anomalous:0.5` fires; ...);
    --video shows the task's overlay (a heat map, ...). Stop with Ctrl-C or
    SIGTERM: the outputs are flushed and the summary written.

    \b
    edgetune infer bundle/ --source 0 --alarm defective:0.8 --on-alarm ./stop_line.sh --out line.jsonl
    """
    from edgetune.camera import InferOptions, run_inference
    from edgetune.camera.stats import print_summary
    from edgetune.runtime.bundle import load_bundle

    webhook = o["webhook"]
    if webhook and not webhook.lower().startswith(("http://", "https://")):
        raise EdgetuneError(f"--webhook {webhook}: give an http:// or https:// URL.")
    out = o["out"]
    summary = o["summary"]
    if summary is None and out != "-":
        summary = Path(out).with_name(Path(out).stem + ".summary.json")
    b = load_bundle(bundle)
    session = b.open(threads=o["threads"], precision=o["precision"])
    if o["save_flagged"] and not session.can_flag:
        raise EdgetuneError(
            f"--save-flagged keeps the frames a bundle's task flags; {bundle} is a {b.task} bundle, which flags none. "
            "Keep frames by their alarms instead (--alarm with --on-alarm)."
        )
    opts = InferOptions(
        source=str(o["source"]),
        mode=o["mode"],
        width=o["width"],
        height=o["height"],
        fps=o["fps"],
        rois=[r for group in o["roi"] for r in group],
        alarms=list(o["alarm"]),
        alarm_frames=o["alarm_frames"],
        on_alarm=o["on_alarm"],
        webhook=webhook,
        out=out,
        format=o["format"],
        video=o["video"],
        show=o["show"],
        status_every=o["status_every"],
        summary=str(summary) if summary else None,
        max_frames=o["max_frames"],
        loop=o["loop"],
        queue_size=o["queue_size"],
        save_flagged=o["save_flagged"],
    )
    result = run_inference(session, list(b.classes), opts, extra={"bundle": str(bundle), "target": b.target})
    print_summary(result)
