"""The camera loop in process, on the real ONNX Runtime session of a tiny model
whose answer is known from the frame's brightness: sources, modes, ROIs, alarms,
damaged input, reconnects."""

from __future__ import annotations

import json
import shlex
import sys
import threading

import cv2
import numpy as np
import pytest
from camera_helpers import CLASSES, brightness_session, defect_score, grey, read_jsonl, write_video

from edgetune.camera import InferOptions, run_inference
from edgetune.camera.alarm import Debouncer, parse_alarm
from edgetune.camera.capture import Capture, FrameBuffer
from edgetune.camera.roi import parse_rois
from edgetune.camera.source import open_source, parse_source
from edgetune.errors import EdgetuneError

DARK, BRIGHT, GREY = 60, 200, 135  # ok (score ~1), defect (score ~1), defect at ~0.77


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return brightness_session(tmp_path_factory.mktemp("model") / "brightness.onnx")


def infer(session, source, tmp_path, **kw):
    opts = InferOptions(
        str(source), out=str(tmp_path / "records.jsonl"), summary=str(tmp_path / "summary.json"), status_every=0, **kw
    )
    summary = run_inference(session, CLASSES, opts)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    return read_jsonl(tmp_path / "records.jsonl") if opts.format != "csv" else None, summary


def test_video_every_mode_gives_one_record_per_frame(session, tmp_path):
    levels = [DARK, BRIGHT, BRIGHT, DARK, GREY, DARK, BRIGHT]
    video = write_video(tmp_path / "line.avi", [grey(v) for v in levels])
    records, summary = infer(session, video, tmp_path)
    assert [r["frame"] for r in records] == list(range(len(levels)))
    assert [r["class"] for r in records] == ["defect" if v > 127 else "ok" for v in levels]
    assert records[4]["score"] == pytest.approx(defect_score(GREY), abs=1e-3)
    for r in records:
        assert set(r) == {"time", "frame", "source", "roi", "class", "score", "latency_ms", "alarm"}
        assert r["source"] == str(video) and r["latency_ms"] > 0 and r["time"].endswith("+00:00")
    assert summary["mode"] == "every" and summary["stopped_by"] == "end of source"
    assert summary["frames_read"] == summary["frames_inferred"] == summary["records"] == len(levels)
    assert summary["dropped"] == summary["corrupt"] == 0 and summary["latency_ms"]["n"] == len(levels)


def test_csv_records_and_annotated_video(session, tmp_path):
    video = write_video(tmp_path / "line.avi", [grey(v) for v in [DARK, BRIGHT, DARK]])
    out = tmp_path / "records.csv"
    run_inference(
        session, CLASSES, InferOptions(str(video), out=str(out), video=str(tmp_path / "annotated.mp4"), status_every=0)
    )
    rows = out.read_text().splitlines()
    assert rows[0] == "time,frame,source,roi,class,score,latency_ms,alarm"
    assert [r.split(",")[4] for r in rows[1:]] == ["ok", "defect", "ok"]
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    ok, first = cap.read()
    assert ok and first.std() > 5  # label text drawn on a uniform frame
    assert not list(tmp_path.glob(".*partial*"))


def test_image_directory_skips_and_counts_a_corrupt_image(session, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, v in enumerate([DARK, BRIGHT, DARK]):
        cv2.imwrite(str(folder / f"img_{i}.png"), grey(v))
    (folder / "img_1b.png").write_bytes(b"\x89PNG not really")  # sorts between 1 and 2
    (folder / "notes.txt").write_text("not an image")
    records, summary = infer(session, folder, tmp_path)
    assert [(r["source"], r["class"]) for r in records] == [
        (str(folder / "img_0.png"), "ok"),
        (str(folder / "img_1.png"), "defect"),
        (str(folder / "img_2.png"), "ok"),
    ]
    assert [r["frame"] for r in records] == [0, 1, 3]  # the corrupt image keeps its index
    assert summary["corrupt"] == 1 and summary["source_kind"] == "images"
    records, _ = infer(session, f"{folder}/img_[02].png", tmp_path / "glob")
    assert [r["source"] for r in records] == [str(folder / "img_0.png"), str(folder / "img_2.png")]
    with pytest.raises(EdgetuneError, match="no readable frame in a whole pass"):
        infer(session, folder / "img_1b.png", tmp_path / "loop", loop=True)  # glob of one bad file: no endless loop


def test_each_roi_is_classified_on_its_own(session, tmp_path):
    frame = grey(DARK, (96, 48))
    frame[:, 48:] = BRIGHT  # left half ok, right half defect
    video = write_video(tmp_path / "two_parts.avi", [frame, frame[:, ::-1]])
    rois = [*parse_rois("left=0,0,48,48"), *parse_rois({"right": "48,0,48,48"})]
    records, summary = infer(session, video, tmp_path, rois=rois)
    assert [(r["frame"], r["roi"], r["class"]) for r in records] == [
        (0, "left", "ok"),
        (0, "right", "defect"),
        (1, "left", "defect"),
        (1, "right", "ok"),
    ]
    assert summary["records"] == 4 and summary["frames_inferred"] == 2
    with pytest.raises(EdgetuneError, match="ROI 'wide'.*outside the 96x48"):
        infer(session, video, tmp_path / "bad", rois=list(parse_rois("wide=50,0,48,48")))
    with pytest.raises(ValueError, match="x,y,w,h"):
        parse_rois("left=0,0,48")


def test_debounce_fires_on_the_kth_consecutive_frame_only():
    d = Debouncer(3)
    assert [d.update(x) for x in [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1]] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert parse_alarm("defect:0.8").threshold == 0.8
    with pytest.raises(ValueError):
        parse_alarm("defect:1.5")


def test_alarm_fires_exactly_when_expected_and_its_command_gets_the_record(session, tmp_path):
    # scores: BRIGHT ~1.0, GREY ~0.77 (under 0.8), DARK ~0
    levels = [BRIGHT, BRIGHT, GREY, BRIGHT, BRIGHT, BRIGHT, BRIGHT, BRIGHT, DARK, BRIGHT, BRIGHT, BRIGHT, DARK]
    video = write_video(tmp_path / "line.avi", [grey(v) for v in levels])
    got = tmp_path / "alarms"
    got.mkdir()
    script = tmp_path / "stop_line.py"
    script.write_text(
        "import json, sys, pathlib\nr = json.load(sys.stdin)\n"
        "pathlib.Path(sys.argv[1], f\"{r['frame']}.json\").write_text(json.dumps(r))\n"
    )
    records, summary = infer(
        session,
        video,
        tmp_path,
        alarms=[parse_alarm("defect:0.8")],
        alarm_frames=3,
        on_alarm=shlex.join([sys.executable, str(script), str(got)]),
    )
    assert [r["frame"] for r in records if r["alarm"]] == [5, 11]
    assert summary["alarms"] == 2 and summary["alarm_actions"] == {"done": 2, "failed": 0}
    received = {int(p.stem): json.loads(p.read_text()) for p in got.glob("*.json")}
    assert sorted(received) == [5, 11]
    assert (
        received[5]["alarm"] == "defect:0.8" and received[5]["class"] == "defect" and received[5]["alarm_score"] > 0.8
    )
    assert received[11]["time"] == records[11]["time"]


def test_failing_alarm_command_does_not_stop_inference(session, tmp_path):
    video = write_video(tmp_path / "line.avi", [grey(BRIGHT)] * 8)
    fail = shlex.join([sys.executable, "-c", "import sys; sys.exit('line PLC unreachable')"])
    records, summary = infer(
        session, video, tmp_path, alarms=[parse_alarm("defect:0.5")], alarm_frames=1, on_alarm=fail
    )
    assert len(records) == 8 and summary["stopped_by"] == "end of source"
    assert summary["alarms"] == 1 and summary["alarm_actions"] == {"done": 0, "failed": 1}
    records, summary = infer(
        session,
        video,
        tmp_path / "missing",
        alarms=[parse_alarm("defect:0.5")],
        alarm_frames=1,
        on_alarm=str(tmp_path / "no_such_script.sh"),
    )
    assert len(records) == 8 and summary["alarm_actions"]["failed"] == 1
    with pytest.raises(EdgetuneError, match="no class 'scratch'"):
        infer(session, video, tmp_path / "cls", alarms=[parse_alarm("scratch:0.5")])


def test_fps_covers_inference_only_and_a_hanging_alarm_action_is_reported_apart(session, tmp_path, capsys):
    """One alarm action that hangs past the end of the video: the summary's FPS is
    over the inference period; the shutdown wait for the action is its own figure."""
    from edgetune.camera.stats import print_summary

    video = write_video(tmp_path / "line.avi", [grey(BRIGHT)] * 20)
    hang = shlex.join([sys.executable, "-c", "import time; time.sleep(5)"])
    records, summary = infer(
        session, video, tmp_path, alarms=[parse_alarm("defect:0.5")], alarm_frames=1, on_alarm=hang
    )
    assert len(records) == 20 and summary["alarm_actions"] == {"done": 1, "failed": 0}
    # The action sleeps 5 s from its frame on: what inference has not covered of it is
    # the shutdown wait (a loaded machine slows inference, so no tighter bound).
    assert (
        summary["alarm_actions_wait_seconds"] >= 1.0
        and summary["shutdown_seconds"] >= summary["alarm_actions_wait_seconds"]
    )
    assert summary["seconds"] + summary["alarm_actions_wait_seconds"] >= 4.5
    # seconds is rounded to the millisecond: on a fast machine 20 frames take ~20 ms
    assert summary["seconds"] < 4.0 and summary["fps"] * summary["seconds"] == pytest.approx(
        20, abs=summary["fps"] * 0.0005 + 0.01
    )
    assert not summary["alarm_actions_unfinished"]
    print_summary(summary)
    out = " ".join("".join(capsys.readouterr()).split())
    assert "s of inference" in out and "waiting for alarm actions" in out


def test_truncated_and_damaged_videos_finish_cleanly(session, tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(20)]
    data = write_video(tmp_path / "full.avi", frames).read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])  # the recorder died mid-file
    records, summary = infer(session, tmp_path / "cut.avi", tmp_path / "cut")
    assert 5 <= len(records) < 20 and summary["truncated"] and summary["stopped_by"] == "end of source"
    assert [r["frame"] for r in records] == list(range(len(records)))
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 3000] = rng.integers(0, 255, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.avi").write_bytes(bytes(damaged))
    records, summary = infer(session, tmp_path / "damaged.avi", tmp_path / "damaged")
    assert summary["corrupt"] >= 1 and len(records) >= 15  # frames after the damage still processed


def test_latest_mode_drops_stale_frames_and_keeps_the_newest(session, tmp_path):
    class Slow:  # a model slower than the source
        name, precision = session.name, session.precision

        def run_frames(self, frames):
            threading.Event().wait(0.03)
            return session.run_frames(frames)

    video = write_video(tmp_path / "line.avi", [grey(DARK)] * 40)
    opts = InferOptions(str(video), mode="latest", out=str(tmp_path / "r.jsonl"), status_every=0)
    summary = run_inference(Slow(), CLASSES, opts)
    frames = [r["frame"] for r in read_jsonl(tmp_path / "r.jsonl")]
    assert summary["dropped"] > 0 and frames == sorted(set(frames)) and frames[-1] == 39
    assert summary["frames_inferred"] + summary["dropped"] == summary["frames_read"] == 40


def test_lost_live_source_is_reopened_with_backoff(tmp_path):
    video = write_video(tmp_path / "camera.avi", [grey(DARK)] * 5)
    spec = parse_source(str(video))
    reader = open_source(spec)
    away = tmp_path / "unplugged.avi"
    video.rename(away)  # the camera goes away after it was opened ...
    threading.Timer(1.0, away.rename, [video]).start()  # ... and comes back a second later
    buffer, stop = FrameBuffer("every", 100), threading.Event()
    capture = Capture(reader, lambda: open_source(spec), buffer, stop, live=True, max_frames=8, backoff=(0.2, 0.4))
    capture.start()
    capture.join(10)
    frames = []
    while (f := buffer.get(0)) is not None:
        frames.append(f.index)
    assert frames == list(range(8)) and capture.error is None
    assert capture.stats.reconnects == 1
    assert capture.stats.gaps[0]["after_frame"] == 4 and capture.stats.gaps[0]["seconds"] >= 0.9


def test_bad_sources_are_user_errors(session, tmp_path):
    (tmp_path / "notes.avi").write_text("not a video")
    (tmp_path / "empty").mkdir()
    for source, message in [
        (tmp_path / "nope.avi", "does not exist"),
        (tmp_path / "notes.avi", "cannot be opened"),
        (tmp_path / "empty", "holds no images"),
        (f"{tmp_path}/*.jpg", "matches no files"),
    ]:
        with pytest.raises(EdgetuneError, match=message):
            run_inference(session, CLASSES, InferOptions(str(source), out=str(tmp_path / "r.jsonl")))
    assert parse_source("0").kind == "camera" and parse_source("/dev/video2").target == "/dev/video2"
    assert parse_source("rtsp://cam.local:554/stream").kind == "stream"


def test_alarm_posts_the_record_to_a_webhook_and_survives_a_dead_one(session, tmp_path, monkeypatch, caplog):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    posted = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            posted.append(
                (self.headers["Content-Type"], json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    video = write_video(tmp_path / "line.avi", [grey(DARK), grey(BRIGHT), grey(BRIGHT), grey(DARK)])
    try:
        records, summary = infer(
            session,
            video,
            tmp_path,
            alarms=[parse_alarm("defect:0.9")],
            alarm_frames=2,
            webhook=f"http://127.0.0.1:{server.server_port}/alarm",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert [(ct, r["frame"], r["alarm"]) for ct, r in posted] == [("application/json", 2, "defect:0.9")]
    assert summary["alarm_actions"] == {"done": 1, "failed": 0}
    # Nobody listening, and no display: both reported, all frames still processed.
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    records, summary = infer(
        session,
        video,
        tmp_path / "dead",
        alarms=[parse_alarm("defect:0.9")],
        alarm_frames=2,
        webhook=f"http://127.0.0.1:{server.server_port}/alarm",
        show=True,
    )
    assert len(records) == 4 and summary["alarm_actions"]["failed"] == 1
    assert "no display" in caplog.text and "webhook" in caplog.text


def test_roi_outside_a_later_image_is_a_user_error(session, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), grey(DARK, (64, 48)))
    cv2.imwrite(str(folder / "b.png"), grey(DARK, (32, 24)))  # a smaller image further on
    with pytest.raises(EdgetuneError, match=r"ROI 'part'.*outside the 32x24 frames of .*b\.png"):
        infer(session, folder, tmp_path, rois=list(parse_rois("part=10,10,30,30")))
    assert len(read_jsonl(tmp_path / "records.jsonl")) == 1  # the first image was processed and kept
    assert json.loads((tmp_path / "summary.json").read_text())["stopped_by"] == "error: EdgetuneError"
