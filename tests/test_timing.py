"""The timing harness: its statistics on known samples and on a session with a
known, injected delay; the min-time / min-count rule; the device-side runner."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgetune.runtime import devicebench
from edgetune.runtime.preprocess import PreprocessSpec
from edgetune.runtime.timing import Policy, peak_rss_mb, summarize, throughput_fps, time_alternating, time_call

SPEC = PreprocessSpec(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class SleepSession:
    """A session whose every call takes `delay_s` (sleep), whatever the batch."""

    name, precision = "sleep", "fp32"

    def __init__(self, delay_s: float, classes: int = 2):
        self.delay_s, self.classes, self.calls = delay_s, classes, 0

    def run(self, batch):
        self.calls += 1
        time.sleep(self.delay_s)
        return np.zeros((len(batch), self.classes), np.float32) + np.arange(self.classes)

    def run_frames(self, frames):
        from edgetune.runtime.preprocess import preprocess

        return self.run(preprocess(frames, SPEC))


def test_summary_of_known_samples_keeps_outliers():
    s = summarize(np.arange(1, 101) / 1e3)  # 1..100 ms
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(np.std(np.arange(1, 101)))
    # One 1 s stall among 99 calls of 1 ms: kept in p99, max, mean and std.
    s = summarize([1e-3] * 99 + [1.0])
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["p99_ms"] == pytest.approx(1 + 0.01 * 999)
    assert s["max_ms"] == pytest.approx(1000)
    assert s["mean_ms"] == pytest.approx((99 + 1000) / 100)
    assert s["std_ms"] > 90
    with pytest.raises(ValueError):
        summarize([])


def test_injected_delay_is_measured():
    session = SleepSession(0.005)
    policy = Policy(warmup=3, min_time_s=0.25, min_runs=20)
    seen = []
    t = time_call(lambda: session.run(np.zeros((1, 3, 4, 4), np.float32)), policy, lambda n, el: seen.append((n, el)))
    s = t.stats()
    # sleep() never returns early; a loaded 2-core box may add a few ms.
    assert 5.0 <= s["p50_ms"] < 12.0
    assert s["min_ms"] >= 5.0 and s["p99_ms"] >= s["p90_ms"] >= s["p50_ms"] >= s["min_ms"]
    # Warm-up calls are made but not recorded; then both rules hold.
    assert session.calls == 3 + s["n"]
    assert s["n"] >= 20 and seen[-1][1] >= 0.25
    assert seen[-1][0] == s["n"] and [n for n, _ in seen] == list(range(1, s["n"] + 1))
    assert throughput_fps(1, t) == pytest.approx(1000 / s["mean_ms"])


def test_min_count_and_min_time_rules():
    fast = lambda: time.sleep(0.001)  # noqa: E731
    by_count = time_call(fast, Policy(warmup=0, min_time_s=0.0, min_runs=30))
    assert len(by_count.samples_s) == 30  # count reached first: stops exactly there
    by_time = time_call(fast, Policy(warmup=0, min_time_s=0.2, min_runs=5))
    n = len(by_time.samples_s)
    assert n > 5 and by_time.total_s <= 0.2 + 0.05 + by_time.samples_s[-1]
    assert by_time.total_s + 0.02 * n >= 0.2  # ran at least until 0.2 s had passed (samples exclude loop overhead)
    with pytest.raises(ValueError):
        Policy(min_runs=0)


def test_alternating_blocks_share_the_drift():
    """A machine that slows down halfway: timed in two phases, two equal calls
    would differ by the slowdown; in alternating blocks each sees both halves."""
    calls, start = [], time.perf_counter()

    def call(name):
        calls.append(name)
        time.sleep(0.001 if time.perf_counter() - start < 0.15 else 0.003)

    t = time_alternating(
        {"a": lambda: call("a"), "b": lambda: call("b")}, Policy(warmup=1, min_time_s=0.3, min_runs=10), rounds=5
    )
    switches = sum(x != y for x, y in zip(calls, calls[1:]))
    assert switches == 9  # a b a b ... in five rounds of blocks
    assert all(len(t[k].samples_s) >= 10 for k in "ab")
    assert t["a"].stats()["mean_ms"] == pytest.approx(t["b"].stats()["mean_ms"], rel=0.3)


def test_bimodal_delays_show_in_percentiles():
    delays = iter([0.002, 0.012] * 1000)
    s = time_call(lambda: time.sleep(next(delays)), Policy(warmup=0, min_time_s=0.0, min_runs=40)).stats()
    assert s["min_ms"] >= 2.0 and s["p90_ms"] >= 12.0
    assert 2.0 <= s["p50_ms"] <= 16.0 and s["mean_ms"] == pytest.approx(7, abs=3)


def test_peak_rss_tracks_allocation():
    before = peak_rss_mb()
    block = np.ones(120 * 1024 * 1024 // 8)  # 120 MB, touched
    assert peak_rss_mb() >= before + 100 or before > 120  # a parent test may already have peaked higher
    assert block.sum() > 0


def test_measure_covers_model_e2e_throughput_and_logits(tmp_path, capsys):
    import cv2

    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), np.full((20, 24, 3), 40 * i, np.uint8))
        paths.append(str(p))
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(paths))
    session = SleepSession(0.003, classes=3)
    frame = np.zeros((20, 24, 3), np.uint8)
    r = devicebench.measure(session, SPEC, Policy(warmup=1, min_time_s=0.05, min_runs=5), [1, 4], frame, str(listing))
    assert set(r["latency"]) == {"model", "e2e"} and r["latency"]["model"]["p50_ms"] >= 3.0
    assert set(r["throughput"]) == {"1", "4"}
    # Every call takes 3 ms whatever the batch, so batch 4 gives ~4x the images per second.
    assert r["throughput"]["4"]["fps"] == pytest.approx(4 * r["throughput"]["1"]["fps"], rel=0.5)
    assert r["predictions"] == [[0.0, 1.0, 2.0]] * 3  # a bare session's results: the default task's (logits)
    lines = [
        json.loads(line[len(devicebench.PROGRESS) :])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(devicebench.PROGRESS)
    ]
    assert {p["phase"] for p in lines} == {"latency b1", "throughput b4", "accuracy"}
    assert any(p.get("finished") and p["phase"] == "accuracy" and p["done"] == 3 for p in lines)


def test_devicebench_main_writes_result_with_device(tmp_path):
    info = {
        "kind": "test",
        "name": "sleep",
        "runtime": "sleep",
        "precision": "fp32",
        "classes": ["a", "b"],
        "size_bytes": 1,
    }
    out = tmp_path / "r.json"
    rc = devicebench.main(
        [str(tmp_path), "--out", str(out), "--warmup", "1", "--min-time", "0", "--min-runs", "3", "--batch", "1,2"],
        opener=lambda path, threads, precision, runtime: (SleepSession(0.001), SPEC, info),
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["artifact"] == info and r["batches"] == [1, 2] and r["load_s"] >= 0
    assert r["latency"]["model"]["n"] == 3 and r["peak_rss_mb"] > 1
    dev = r["device"]
    assert dev["cores"] >= 1 and dev["cpu"] and dev["os"] and dev["memory_gb"] > 0 and dev["machine"]
    assert r["python"]["edgetune_from"].endswith("edgetune")
