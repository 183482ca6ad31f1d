"""`edgetune infer` end to end in a subprocess: per-frame classes match `evaluate`,
exit 2 on a source that cannot be opened, SIGTERM/SIGINT leave complete outputs,
and the command runs with torch, timm and nncf blocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
from camera_helpers import CLASSES, SPEC, brightness_model, grey, make_bundle, read_jsonl, write_video
from conftest import EDGETUNE, run_cli


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A CPU bundle of the brightness model (bright frames are 'defect')."""
    d = tmp_path_factory.mktemp("bundle")
    return make_bundle(d / "bundle-cpu", brightness_model(d / "m.onnx"), CLASSES, SPEC)


@pytest.fixture(scope="module")
def line_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "line.avi", [grey(60), grey(200)] * 10)


@pytest.mark.slow
def test_records_match_evaluate_predictions_frame_by_frame(float_run, fp32_bundle, tmp_path):
    """A video of the test split's images, one per frame: the records of the run's
    fp32 bundle give the classes `edgetune evaluate` predicted for those images."""
    run_cli("evaluate", float_run)
    preds = json.loads((float_run / "eval_test.json").read_text())["predictions"]
    classes = json.loads((fp32_bundle / "manifest.json").read_text())["classes"]
    video = write_video(tmp_path / "test_split.avi", [cv2.imread(p["path"]) for p in preds], fps=10)  # lossless
    out = tmp_path / "records.jsonl"
    run_cli("infer", fp32_bundle, "--source", video, "--mode", "every", "--out", out)
    records = read_jsonl(out)
    assert [r["frame"] for r in records] == list(range(len(preds)))
    assert [r["class"] for r in records] == [classes[p["pred"]] for p in preds]
    assert len({r["class"] for r in records}) == 2  # the comparison is not trivially one class


@pytest.mark.parametrize("target", ["cpu", "intel"])
def test_built_bundle_records_match_its_own_session(built_bundles, image_folder, tmp_path, target):
    """INT8 bundles from `edgetune build`, ONNX Runtime and OpenVINO (both with the
    preprocessing in the capture thread): per-frame classes and scores equal the
    bundle session's on the source images."""
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.tasks.classification import softmax

    paths = sorted(image_folder.glob("*/*.png"))[::3]
    images = [cv2.imread(str(p)) for p in paths]
    bundle = load_bundle(built_bundles / f"bundle-{target}")
    probs = softmax(bundle.open().run_frames(images).astype("float64"))
    video = write_video(tmp_path / "line.avi", images)
    out = tmp_path / "records.jsonl"
    run_cli("infer", bundle.root, "--source", video, "--out", out)
    records = read_jsonl(out)
    assert [r["class"] for r in records] == [bundle.classes[k] for k in probs.argmax(1)]
    assert [r["score"] for r in records] == pytest.approx(probs.max(1), abs=2e-3)


def test_config_rois_alarm_and_summary(tiny_bundle, tmp_path):
    frame = grey(60, (96, 48))
    frame[:, 48:] = 200
    video = write_video(tmp_path / "parts.avi", [frame] * 4)
    config = tmp_path / "line.yaml"
    config.write_text(
        f"infer:\n  source: {video}\n  roi:\n    left: 0,0,48,48\n    right: [48, 0, 48, 48]\n"
        "  alarm: ['defect:0.9']\n  alarm-frames: 2\n"
    )
    out = tmp_path / "line.csv"
    proc = run_cli("--config", config, "infer", tiny_bundle, "--out", out)
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [(r[3], r[4]) for r in rows] == [("left", "ok"), ("right", "defect")] * 4
    assert [(r[1], r[3]) for r in rows if r[7]] == [("1", "right")]  # the 2nd consecutive frame, right only
    summary = json.loads((tmp_path / "line.summary.json").read_text())
    assert summary["alarms"] == 1 and summary["rois"] == ["left", "right"] and summary["bundle"] == str(tiny_bundle)
    assert "ALARM defect on ROI 'right' at frame 1" in " ".join(proc.stderr.split())
    assert "4 frames" in proc.stderr


@pytest.mark.parametrize(
    "source, message", [("nope.avi", "does not exist"), ("notes.avi", "cannot be opened"), ("99", "cannot be opened")]
)
def test_unopenable_source_exits_2_with_a_clear_message(tiny_bundle, tmp_path, source, message):
    (tmp_path / "notes.avi").write_text("not a video")
    proc = run_cli("infer", tiny_bundle, "--source", source, "--out", tmp_path / "r.jsonl", check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_bad_alarm_and_roi_values_exit_2(tiny_bundle, line_video, tmp_path):
    for args, message in [
        (["--alarm", "scratch:0.5"], "no class 'scratch'"),
        (["--alarm", "defect"], "CLASS:THRESHOLD"),
        (["--roi", "a=0,0,500,10"], "outside the 64x48"),
        (["--webhook", "file:///etc/passwd"], "http"),
    ]:
        proc = run_cli("infer", tiny_bundle, "--source", line_video, "--out", tmp_path / "r.jsonl", *args, check=False)
        assert proc.returncode == 2 and message in " ".join(proc.stderr.split()), proc.stderr


@pytest.mark.parametrize("sig, fmt", [(signal.SIGTERM, "jsonl"), (signal.SIGINT, "csv")])
def test_signal_mid_run_leaves_complete_outputs_and_a_summary(tiny_bundle, line_video, tmp_path, sig, fmt):
    out = tmp_path / f"records.{fmt}"
    proc = subprocess.Popen(
        [
            *EDGETUNE,
            "infer",
            str(tiny_bundle),
            "--source",
            str(line_video),
            "--loop",
            "--out",
            str(out),
            "--video",
            str(tmp_path / "annotated.avi"),
            "--status-every",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 200):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "records.summary.json").read_text())
    assert summary["stopped_by"] == sig.name and summary["loops"] >= 1
    text = out.read_text()
    assert text.endswith("\n")
    if fmt == "jsonl":
        records = [json.loads(line) for line in text.splitlines()]
    else:
        lines = text.splitlines()
        assert lines[0].startswith("time,frame,")
        records = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert len(records) == summary["records"] == summary["frames_inferred"] >= 200
    assert [int(r["frame"]) for r in records] == list(range(len(records)))
    cap = cv2.VideoCapture(str(tmp_path / "annotated.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames_inferred"]
    assert "FPS" in err and "p50" in err  # status lines


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'nncf', 'torchvision'):
            raise ImportError(f'{name} is blocked: the device has no torch')
sys.meta_path.insert(0, Block())
import edgetune.camera, edgetune.cli.infer_cmd
from edgetune.cli.main import main
main(sys.argv[1:])
"""


def test_infer_runs_with_torch_timm_and_nncf_blocked(tiny_bundle, line_video, tmp_path):
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, "infer", str(tiny_bundle), "--source", str(line_video), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["class"] for r in read_jsonl(out)] == ["ok", "defect"] * 10
    assert (
        "torch"
        not in subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, edgetune.camera, edgetune.cli.infer_cmd; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'nncf')))",
            ],
            capture_output=True,
            text=True,
        ).stdout
    )
