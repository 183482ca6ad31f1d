"""`edgetune bench` on this machine: rows in the results-row format (docs/measure.md),
the PyTorch baseline through the same runner, JSON, Markdown and PNG."""

from __future__ import annotations

import json

import cv2
from conftest import invoke

from edgetune.bench.report import ROW_FIELDS


def test_bench_rows_json_markdown_png(fp32_bundle, tmp_path, capsys):
    js, md, png = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "bench.png"
    assert (
        invoke(
            "bench",
            fp32_bundle,
            "--threads",
            "1",
            "--batch",
            "1,4",
            "--warmup",
            "1",
            "--min-time",
            "0.05",
            "--min-runs",
            "5",
            "--json",
            js,
            "--markdown",
            md,
            "--plot",
            png,
        )
        == 0
    )
    rows = json.loads(js.read_text())["rows"]
    # The float run the bundle came from is added as the PyTorch baseline, first.
    assert [(r["runtime"], r["stage"], r["precision"]) for r in rows] == [
        ("pytorch", "float", "fp32"),
        ("onnxruntime", "float", "fp32"),
    ]
    for r in rows:
        assert all(k in r for k in ROW_FIELDS)
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 and r["n_images"] == 15  # the run's test split
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"] and r["latency_runs"] >= 5
        assert set(r["throughput_by_batch"]) == {"1", "4"} and r["throughput_fps"] == max(
            r["throughput_by_batch"].values()
        )
        assert r["size_mb"] > 0 and r["macs"] > 0 and r["load_s"] > 0 and r["peak_rss_mb"] > 10 and r["e2e_ms_p50"] > 0
        assert r["machine"] and r["date"] and r["dataset"] == "images"
    base, onnx = rows
    assert base["speedup_vs_pytorch"] == 1.0 and onnx["speedup_vs_pytorch"] > 0
    assert onnx["agreement"] == 1.0 and base["agreement"] is None  # fp32 ONNX = its PyTorch model
    assert onnx["accuracy"] == base["accuracy"]
    assert base["peak_rss_mb"] > onnx["peak_rss_mb"]  # each artifact in its own process: torch is not in the ONNX row
    table = [line for line in md.read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and "p50 ms" in table[0] and "onnxruntime" in table[3]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(png)).shape[0] > 100
    assert "pytorch" in capsys.readouterr().err  # the rich table


def test_bench_usage_errors(fp32_bundle, tmp_path, capsys):
    assert invoke("bench", tmp_path / "missing") == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert invoke("bench", fp32_bundle, "--batch", "0,x") == 2
    assert invoke("bench", fp32_bundle, "--device", "http://box") == 2
    assert "ssh://user@host[:port]" in capsys.readouterr().err
    assert invoke("bench", fp32_bundle, "--precision", "int8") == 2
    assert "no int8 artifact" in capsys.readouterr().err


def test_plot_labels_stage_and_precision_pareto_front_no_overlaps(tmp_path):
    """Pruned and unpruned bundles of one runtime and precision read apart; points
    crowded together still get labels that do not overlap; the axis is log."""
    from edgetune.bench.report import pareto_front, plot

    def row(name, stage, runtime, precision, acc, ms, ran=None):
        return {
            "name": name,
            "stage": stage,
            "runtime": runtime,
            "precision": precision,
            "accuracy": acc,
            "latency_ms_p50": ms,
            "inference_precision": ran,
        }

    rows = [
        row("run-float", "float", "pytorch", "fp32", 0.677, 19.6),
        row("bundle-cpu", "qat", "onnxruntime", "fp32", 0.677, 4.93, "fp32"),
        row("bundle-cpu", "qat", "onnxruntime", "int8", 0.672, 2.22, "fp32"),
        row(
            "bundle-cpu", "pruned+qat", "onnxruntime", "int8", 0.668, 2.21, "fp32"
        ),  # same runtime/precision, another stage
        row("bundle-intel", "qat", "openvino", "fp32", 0.677, 2.53, "fp32"),
        row("bundle-intel", "qat", "openvino", "bf16", 0.676, 2.50, "bf16"),
        row("bundle-intel", "qat", "openvino", "int8", 0.674, 1.91, "fp32"),
        row("bundle-intel", "pruned+qat", "openvino", "int8", 0.670, 1.28, "fp32"),
        row("bundle-gpu", "qat", "openvino", "fp16", 0.675, 1.90, "bf16"),
    ]
    drawn = plot(rows, tmp_path / "plot.png", "test")
    texts, boxes = zip(*drawn["labels"])
    assert (
        "pruned+qat onnxruntime int8" in texts
        and "qat onnxruntime int8" in texts
        and "qat openvino fp16 (ran bf16)" in texts
    )
    assert len(set(texts)) == len(rows)
    assert not [(texts[i], texts[j]) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert drawn["xscale"] == "log"
    assert [r["latency_ms_p50"] for r in pareto_front(rows)] == [
        1.28,
        1.90,
        2.50,
        2.53,
    ]  # 1.91 ms is beaten by 1.90 ms at a higher accuracy
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_bundles_named_alike_are_told_apart_by_their_folders():
    """Two builds both make `bundle-intel`: their rows (and the table and plot) name
    each by the shortest tail of its path that differs; a device's copy keeps its name."""
    from edgetune.bench.report import complete_rows

    def row(path, precision, ms, name="bundle-intel", **kw):
        return {
            "name": name,
            "path": path,
            "runtime": "openvino",
            "stage": "ptq",
            "precision": precision,
            "latency_ms_p50": ms,
            "machine": "m",
            **kw,
        }

    rows = [
        row("/w/run", "fp32", 20.0, name="run", runtime="pytorch", stage="float"),
        row("/w/build0/bundle-intel", "int8", 2.0),
        row("/w/build0/bundle-intel", "fp32", 4.0),
        row("/w/build1/bundle-intel", "int8", 1.6),
        row("/elsewhere/bundle-intel", "int8", 2.1, remote="jetson@line3"),
    ]
    complete_rows(rows)
    assert [r["name"] for r in rows] == [
        "run",
        "build0/bundle-intel",
        "build0/bundle-intel",
        "build1/bundle-intel",
        "bundle-intel",
    ]
    assert [r["speedup_vs_pytorch"] for r in rows[:2]] == [1.0, 10.0]
    one = [row("/w/macs42-intel", "int8", 1.5), row("/w/latency33-intel", "int8", 1.4)]
    complete_rows(one)
    assert [r["name"] for r in one] == ["macs42-intel (bundle-intel)", "latency33-intel (bundle-intel)"]
