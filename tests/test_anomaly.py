"""--task anomaly: PatchCore fitted on generated good textures (noise on a regular
grid), tested on the same textures with scratches and blobs; bundles for cpu,
intel and jetson; the runtime's score, map and flag; infer; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from anomaly_helpers import SIZE, make_textures, quantization_record
from conftest import QUICK_BENCH, invoke, ort_optimized, run_cli, unfused_convs

MODEL = ["--model", "test_resnet", "--no-pretrained", "--img-size", str(SIZE)]


@pytest.mark.slow
def test_fit_separates_textures_and_locates_defects(anomaly_build, textures):
    from edgetune.run import load_run
    from edgetune.tasks.anomaly.fit import load_patchcore, run_norm, score_images

    run = load_run(anomaly_build / "finetune")
    assert run.task == "anomaly" and run.classes == ["normal", "anomalous"]
    fit = run.info["history"][-1]["metrics"]
    assert fit["test"]["auroc"] >= 0.9, fit["test"]
    assert 0 < fit["bank"]["rows"] <= 0.1 * fit["bank"]["patches"] + 1
    # Only normal training images were fitted on: 60% of the split's train part holds the 'bad' class too.
    assert fit["bank"]["images"] == sum(1 for _, y in run.split.parts["train"] if y == 0)

    _, masks = textures
    bad = [p for p, y in run.split.parts["test"] if y == 1]
    raw, maps = score_images(load_patchcore(run), bad, run.spec)
    assert (run_norm(run).apply(raw) > 0.5).mean() >= 0.8
    inside = 0
    for path, heat in zip(bad, maps):
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        ys, xs = np.nonzero(masks[path])
        # Inside the drawn defect's box, give or take half a patch (the stride-8 grid's 4 px at 64 px):
        # a 2 px scratch is thinner than one patch. Far from it is anywhere else on the 64 px image.
        inside += bool(ys.min() - 4 <= y <= ys.max() + 4 and xs.min() - 4 <= x <= xs.max() + 4)
    assert inside == len(bad), f"the heat map's peak lies on the defect in {inside} of {len(bad)} images"


@pytest.mark.slow
def test_bundles_for_every_target(anomaly_build):
    import onnx

    from edgetune.export.checks import ort_session, tensorrt_problems
    from edgetune.runtime.bundle import load_bundle

    gates = {t: json.loads((anomaly_build / f"gate-{t}.json").read_text()) for t in ("cpu", "intel", "jetson")}
    assert all(g["passed"] and g["metric"] == "auroc" for g in gates.values()), gates
    for target in ("cpu", "intel", "jetson"):
        m = json.loads((anomaly_build / f"bundle-{target}" / "manifest.json").read_text())
        assert m["task"] == "anomaly" and m["classes"] == ["normal", "anomalous"] and m["precision"] == "int8"
        a = m["anomaly"]
        assert (
            a["threshold"] == 0.5
            and a["map_size"] == [SIZE, SIZE]
            and a["center"] == a["threshold_raw"]
            and a["scale"] > 0
        )
        assert a["normal_class"] == "good" and "F1-optimal" in a["rule"]
        assert m["metrics"]["test"]["auroc"] >= 0.9 and m["calibration"]["count"] > 0
        # Each artifact's threshold is chosen on its own validation scores (INT8 moves them), and a session opened
        # on that artifact reads it.
        bundle = load_bundle(anomaly_build / f"bundle-{target}")
        for precision, art in m["artifacts"].items():
            own = art["task_section"]
            assert own["center"] == own["threshold_raw"] and own["scale"] > 0 and "F1-optimal" in own["rule"]
            runtime = "onnxruntime" if target == "jetson" else None  # no TensorRT here: its Q/DQ ONNX
            assert bundle.open(precision=precision, runtime=runtime).norm.center == own["center"]
        assert m["artifacts"]["int8"]["task_section"]["threshold_raw"] != a["threshold_raw"]
    assert quantization_record(m)[1]["activations"] == "int8"  # TensorRT takes only signed ones
    jetson = anomaly_build / "bundle-jetson"
    # The stem reads the image itself and stays float; the Convs after it are int8.
    model = onnx.load(str(jetson / "model.int8.onnx"))
    graph = model.graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] not in dequantized and all(c.input[1] in dequantized for c in convs[1:4])
    problems, notes = tensorrt_problems(model)
    assert problems == [] and any("MatMul" in n for n in notes)  # the bank's MatMul stays FP16 on TensorRT
    sess = ort_session(jetson / "model.int8.onnx")
    x = np.zeros((3, 3, SIZE, SIZE), np.float32)
    score, heat = sess.run(["score", "map"], {"input": x})  # dynamic batch, the two outputs by name
    assert score.shape == (3,) and heat.shape == (3, SIZE, SIZE)
    ops = {n.op_type for n in onnx.load(str(jetson / "model.int8.onnx")).graph.node}
    assert {"MatMul", "ReduceMin", "ReduceMax", "QuantizeLinear", "DequantizeLinear"} <= ops
    import openvino as ov

    ir = ov.Core().read_model(str(anomaly_build / "bundle-intel" / "model.int8.xml"))
    # the IR says what it is, and claims no Model API type whose outputs it does not have
    assert ir.get_rt_info(["edgetune", "task"]).astype(str) == "anomaly" and not ir.has_rt_info(
        ["model_info", "model_type"]
    )


@pytest.mark.slow
def test_export_checks_an_anomaly_run_unless_told_not_to(anomaly_build, tmp_path, capsys):
    run = anomaly_build / "finetune"
    assert (
        invoke("export", run, "--precision", "fp32", "--out", tmp_path / "a.onnx", "--json", tmp_path / "a.json") == 0
    )
    checks = json.loads((tmp_path / "a.json").read_text())["checks"]
    assert checks["images"] > 0 and checks["spearman"] >= checks["min_spearman"]
    assert "Spearman" in capsys.readouterr().err
    assert (
        invoke(
            "export",
            run,
            "--precision",
            "fp32",
            "--no-check",
            "--out",
            tmp_path / "b.onnx",
            "--json",
            tmp_path / "b.json",
        )
        == 0
    )
    checks = json.loads((tmp_path / "b.json").read_text())["checks"]
    assert checks == {}


@pytest.mark.slow
def test_verify_int8_anomaly_bundle_checks_the_flags_and_a_given_max_diff(anomaly_build, textures, tmp_path):
    data, _ = textures
    assert invoke("verify", anomaly_build / "bundle-cpu", "--images", data, "--json", tmp_path / "v.json") == 0
    v = json.loads((tmp_path / "v.json").read_text())
    assert (
        v["passed"] and v["agreement"] >= 0.99 and not v["diff_checked"] and v["spearman"] > 0.5
    )  # normal images reorder
    # A score difference limit the user sets is checked (INT8 scores are never exact).
    assert (
        invoke(
            "verify", anomaly_build / "bundle-cpu", "--images", data, "--max-diff", "0", "--json", tmp_path / "w.json"
        )
        == 1
    )
    w = json.loads((tmp_path / "w.json").read_text())
    assert w["diff_checked"] and not w["passed"] and w["max_rel_diff"] > 0


@pytest.mark.slow
def test_int8_runtimes_agree_with_pytorch(anomaly_build):
    """The export stage checked ONNX Runtime against the NNCF-quantized PyTorch model
    (score ranks); OpenVINO (intel bundle) and ONNX Runtime with uint8 activations
    (cpu bundle) rank the test images as ONNX Runtime does on the jetson file."""
    from scipy.stats import spearmanr

    from edgetune.camera.pipeline import _prepare_in_capture
    from edgetune.run import load_run
    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import preprocess, read_image

    for tag in ("int8", "int8-uint8"):
        checks = json.loads((anomaly_build / "stages" / f"export-{tag}.json").read_text())["output"]["info"]["checks"]
        assert checks["spearman"] >= 0.99 and checks["images"] >= 20, checks
    run = load_run(anomaly_build / "finetune")
    paths = [p for p, _ in run.split.parts["test"] + run.split.parts["val"]]
    x = preprocess([read_image(p) for p in paths], run.spec)
    ref = load_bundle(anomaly_build / "bundle-jetson").open(runtime="onnxruntime").detect(x)["score"]
    for target in ("cpu", "intel"):
        session = load_bundle(anomaly_build / f"bundle-{target}").open()
        out = session.detect(x)
        assert out["map"].shape == (len(paths), SIZE, SIZE) and out["anomalous"].dtype == bool
        rho = spearmanr(ref, out["score"]).statistic
        assert rho >= 0.99, f"{target}: Spearman {rho:.4f}"
        frames = session.detect_frames([read_image(p) for p in paths[:4]])  # the device path from uint8 BGR frames
        assert np.allclose(frames["score"], out["score"][:4], atol=0.02)
        x0, _ = _prepare_in_capture(session, [])(read_image(paths[0]))[0]  # infer preprocesses in its capture thread
        assert session.detect(x0)["score"][0] == session.detect_frames([read_image(paths[0])])["score"][0]


@pytest.mark.slow
def test_infer_folder_records_scores_and_alarms(anomaly_build, textures, tmp_path):
    data, masks = textures
    folder = tmp_path / "line"
    folder.mkdir()
    bad = sorted(masks)[:4]
    good = sorted(str(p) for p in (data / "good").glob("*.png"))[-6:]
    for i, p in enumerate(good[:3] + bad + good[3:]):  # normal, 4 anomalies, normal
        (folder / f"{i:02d}.png").write_bytes(Path(p).read_bytes())
    out = tmp_path / "records.jsonl"
    run_cli(
        "infer",
        anomaly_build / "bundle-cpu",
        "--source",
        folder,
        "--alarm",
        "anomalous:0.5",
        "--alarm-frames",
        "1",
        "--out",
        out,
        "--save-anomalies",
        tmp_path / "flagged",
        "--video",
        tmp_path / "line.mp4",
        "--status-every",
        "0",
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 10 and all(
        isinstance(r["score"], float) and isinstance(r["anomalous"], bool) for r in records
    )
    assert [r["anomalous"] for r in records[3:7]] == [True] * 4
    fired = [r["frame"] for r in records if r["alarm"]]
    assert fired and all(3 <= f < 7 for f in fired)  # alarms fire on the anomalies, not on the normal parts
    saved = sorted(p.name for p in (tmp_path / "flagged").iterdir())
    assert "frame-000003.png" in saved and "frame-000003-map.png" in saved
    assert (tmp_path / "line.mp4").stat().st_size > 0


def test_save_anomalies_into_a_file_is_refused_before_the_stream(anomaly_build, textures, tmp_path, capfd):
    (tmp_path / "taken").write_text("a file, not a folder")
    assert (
        invoke(
            "infer",
            anomaly_build / "bundle-cpu",
            "--source",
            textures[0] / "good",
            "--save-anomalies",
            tmp_path / "taken" / "flagged",
            "--out",
            tmp_path / "records.jsonl",
        )
        == 2
    )
    err = capfd.readouterr().err
    assert "--save-anomalies" in err and "cannot make that folder" in err and not (tmp_path / "records.jsonl").exists()


@pytest.mark.slow
def test_evaluate_writes_histogram_and_gallery(anomaly_build):
    proc = run_cli("evaluate", anomaly_build / "finetune")
    assert "image AUROC" in proc.stderr + proc.stdout
    m = json.loads((anomaly_build / "finetune" / "eval_test.json").read_text())
    assert m["auroc"] >= 0.9 and m["false_alarm_rate"] is not None
    assert Path(m["files"]["histogram"]).stat().st_size > 0 and Path(m["files"]["gallery"]).stat().st_size > 0


def test_bad_input(textures, tmp_path):
    from edgetune.errors import EdgetuneError
    from edgetune.stages.finetune import run_finetune as run_fit

    data, _ = textures
    proc = run_cli(
        "finetune",
        "--task",
        "anomaly",
        "--data",
        data,
        *MODEL,
        "--normal",
        "pristine",
        "--out",
        tmp_path / "a",
        check=False,
    )
    assert proc.returncode == 2 and "--normal pristine: no such class" in proc.stderr and "bad, good" in proc.stderr
    assert "Traceback" not in proc.stderr

    opts = {
        "task": "anomaly",
        "data": str(data),
        "model": "test_resnet",
        "pretrained": False,
        "img_size": SIZE,
        "normal": "good",
        "seed": 0,
        "skip_bad": False,
        "val_frac": 0.15,
        "test_frac": 0.25,
    }
    with pytest.raises(EdgetuneError, match=r"over --max-bank-mb 0.01\. Lower --coreset .* or --img-size"):
        run_fit({**opts, "max_bank_mb": 0.01, "out": tmp_path / "b"}, {})
    few = tmp_path / "few"
    make_textures(few, n_good=12, n_bad=12)
    with pytest.raises(EdgetuneError, match=r"only 7 image\(s\) of that class; PatchCore needs at least 10"):
        run_fit({**opts, "data": str(few), "out": tmp_path / "c"}, {})
    with pytest.raises(EdgetuneError, match="ViTs are refused"):
        run_fit({**opts, "model": "test_vit", "out": tmp_path / "d"}, {})


@pytest.mark.slow
def test_bench_and_compare_report_auroc(anomaly_build, tmp_path):
    run_cli(
        "bench",
        anomaly_build / "bundle-cpu",
        "--no-baseline",
        *QUICK_BENCH,
        "--json",
        tmp_path / "bench.json",
    )
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows and all(
        r["task"] == "anomaly" and r["auroc"] >= 0.9 and r["false_alarm_rate"] is not None for r in rows
    )
    proc = run_cli(
        "compare",
        anomaly_build / "finetune",
        anomaly_build / "bundle-intel",
        "--max-drop",
        "1.0",
        "--json",
        tmp_path / "gate.json",
    )
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["passed"] and gate["metric"] == "auroc" and "image AUROC" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_good_parts_alone_fit_build_and_flag_a_defect(tmp_path):
    """The most common case: nobody has labelled a defect yet. A class folder that
    holds only the --normal class, or a plain folder of images (all normal), fits;
    the threshold is the false-alarm quantile, AUROC is said to need anomalies, the
    gate watches the false-alarm rate, and the bundle flags a defect it never saw."""
    import shutil

    from edgetune.runtime.bundle import load_bundle
    from edgetune.runtime.preprocess import read_image

    data = tmp_path / "textures"
    make_textures(data, n_good=40, n_bad=8)
    only = tmp_path / "only"
    shutil.copytree(data / "good", only / "good")
    run = tmp_path / "run"
    proc = run_cli("finetune", "--task", "anomaly", "--data", only, "--normal", "good", *MODEL, "--out", run)
    test = json.loads((run / "run.json").read_text())["history"][-1]["metrics"]["test"]
    assert test["auroc"] is None and test["false_alarm_rate"] is not None and test["n_anomalous"] == 0
    assert "quantile" in json.loads((run / "run.json").read_text())["anomaly"]["rule"]
    proc = run_cli("evaluate", run)
    assert "needs anomalous images" in proc.stderr + proc.stdout and "nan" not in (proc.stderr + proc.stdout).lower()

    cfg = tmp_path / "build.yaml"  # a plain folder of images: all of them normal, no --normal needed
    cfg.write_text(f"task: anomaly\ndata: {data / 'good'}\nmodel: test_resnet\npretrained: false\nimg-size: {SIZE}\n")
    out = tmp_path / "build"
    run_cli("--config", cfg, "build", "--target", "cpu", "--out", out)
    gate = json.loads((out / "gate-cpu.json").read_text())
    assert gate["passed"] and gate["metric"] == "false_alarm_rate" and gate["checks"][0]["name"] == "false_alarm_rise"
    # No target here needs signed activations: NNCF's unsigned ones after each ReLU(6) let ONNX Runtime
    # drop it and run every quantized Conv on its integer kernels (tests/test_families.py: signed ones
    # before a ReLU6 leave them float).
    manifest = json.loads((out / "bundle-cpu" / "manifest.json").read_text())
    assert quantization_record(manifest)[1]["activations"] == "auto"
    assert unfused_convs(ort_optimized(out / "bundle-cpu" / "model.int8.onnx", tmp_path)) == []
    session = load_bundle(out / "bundle-cpu").open()
    bad = sorted((data / "bad").glob("*.png"))
    flagged = [r.anomalous for r in session.predict_frames([read_image(p) for p in bad])]
    assert sum(flagged) >= 6, flagged  # defects it never saw, flagged
