"""Structured pruning: fewer MACs, channel multiples, exact reload, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import invoke

PRUNE = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "0"]


def _convs(model):
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, float_run):
    out = tmp_path_factory.mktemp("runs") / "pruned"
    assert invoke("prune", float_run, "--ratio", "0.5", "--round-to", "8", "--steps", "2", *PRUNE, "--out", out) == 0
    return out


def test_prune_lowers_macs_rounds_channels_and_records_metrics(pruned_run, float_run):
    from edgetune.run import load_run

    run, parent = load_run(pruned_run), load_run(float_run)
    info = json.loads((pruned_run / "run.json").read_text())
    m = info["history"][-1]["metrics"]
    assert run.stage == "pruned" and info["parent"] == str(float_run.resolve())
    assert m["after"]["macs"] < 0.6 * m["before"]["macs"] and m["after"]["params"] < m["before"]["params"]
    assert {"accuracy", "f1"} <= set(m["before"]["test"]) and {"accuracy", "f1"} <= set(m["after"]["test"])
    assert [s["step"] for s in m["steps"]] == [1, 2] and all(s["epochs"] for s in m["steps"])
    before, after = _convs(parent.build_model()), _convs(run.build_model())
    changed = [n for n in after if after[n][1] != before[n][1]]
    assert changed, "no layer lost channels"
    assert all(after[n][1] % 8 == 0 for n in changed), {n: after[n] for n in changed}
    # The classifier keeps its outputs (never pruned).
    assert run.build_model().get_classifier().out_features == len(run.classes)


def test_pruned_run_reloads_with_identical_outputs(pruned_run):
    """The reloaded model (timm + recorded shapes + state dict, no pruning code)
    reproduces the test metrics recorded when the pruned model was saved."""
    from edgetune.run import load_run

    run = load_run(pruned_run)
    m = run.task_impl.evaluate(run.build_model(), run.split, run.spec, "test")
    assert m["accuracy"] == run.test_metrics()["accuracy"] and m["f1"] == run.test_metrics()["f1"]


def test_apply_shapes_rebuilds_exactly(float_run):
    from edgetune.compress.prune import prune_once
    from edgetune.compress.shapes import apply_shapes, record_shapes
    from edgetune.models.backbone import create_backbone
    from edgetune.run import load_run

    run = load_run(float_run)
    model = run.build_model()
    prune_once(model, (32, 32), 0.4, 4, "l2")
    fresh = apply_shapes(
        create_backbone(run.model_name, 2, pretrained=False), json.loads(json.dumps(record_shapes(model)))
    )
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fresh.eval()(x))


@pytest.mark.parametrize("ratio, widths", [(0.1, (24, 56)), (0.3, (16, 48)), (0.9, (8, 8))])
def test_kept_channels_round_to_the_nearest_multiple(ratio, widths):
    """Not down: at 10%, torch-pruning's own rounding keeps 16 of 24 channels."""
    from torch import nn

    from edgetune.compress.prune import prune_once

    model = nn.Sequential(
        nn.Conv2d(3, 24, 3),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 64, 3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 2),
    )
    prune_once(model, (16, 16), ratio, 8, "l1")
    assert (model[0].out_channels, model[3].out_channels) == widths


@pytest.mark.parametrize("steps", [1, 2])
def test_target_macs_reaches_the_reduction_and_no_more(float_run, steps):
    from edgetune.compress.prune import mac_reduction, ratio_for_macs
    from edgetune.run import load_run

    model = load_run(float_run).build_model()
    # round_to 2: fine enough steps on this tiny model to see a one-shot ratio overshoot
    ratio = ratio_for_macs(model, (32, 32), 0.4, 2, "l1", steps)
    assert 0 < ratio < 0.95 and mac_reduction(model, (32, 32), ratio, 2, "l1", steps) >= 0.4
    assert mac_reduction(model, (32, 32), ratio - 0.005, 2, "l1", steps) < 0.4  # the smallest ratio that reaches it


def test_step_ratios_reach_the_total():
    from edgetune.compress.prune import step_ratios

    kept = 1.0
    for r in step_ratios(0.5, 3):
        kept *= 1 - r
    assert kept == pytest.approx(0.5)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of --ratio"),
        (["--ratio", "0.3", "--target-macs", "0.5"], "exactly one of --ratio"),
        (["--target-macs", "0.3", "--target-latency", "0.3"], "exactly one of --ratio"),
    ],
)
def test_prune_needs_one_target(float_run, tmp_path, capfd, args, message):
    assert invoke("prune", float_run, *args, "--out", tmp_path / "p") == 2
    assert message in capfd.readouterr().err


def test_prune_rejects_a_folder_that_is_not_a_run(tmp_path, capfd):
    (tmp_path / "notrun").mkdir()
    assert invoke("prune", tmp_path / "notrun", "--ratio", "0.3", "--out", tmp_path / "p") == 2
    assert "not an edgetune run" in capfd.readouterr().err


def test_prune_after_quantize_is_rejected(qat_run, tmp_path, capfd):
    assert invoke("prune", qat_run, "--ratio", "0.3", "--out", tmp_path / "p") == 2
    err = capfd.readouterr().err
    assert "'qat' run and cannot be the input of 'pruned'" in err and "pipeline order" in err


def test_recovery_trains_with_the_input_runs_augmentations_unless_told(tmp_path, image_folder):
    from conftest import TINY

    from edgetune.run import load_run

    assert (
        invoke(
            "finetune",
            "--data",
            image_folder,
            *TINY,
            "--epochs",
            "1",
            "--augment",
            "hflip,contrast=0.2",
            "--out",
            tmp_path / "f",
        )
        == 0
    )
    augments = {}
    for name, extra in (("inherited", []), ("told", ["--augment", "vflip"])):
        assert (
            invoke("prune", tmp_path / "f", "--ratio", "0.25", "--epochs", "0", *extra, "--out", tmp_path / name) == 0
        )
        augments[name] = load_run(tmp_path / name).info["history"][-1]["config"]["augment"]
    assert augments == {"inherited": "hflip,contrast=0.2", "told": "vflip"}


def test_target_latency_prunes_where_the_runtime_gets_faster(float_run, tmp_path):
    """Every group recorded at every ratio (timed on ONNX Runtime unless it prunes
    nothing); the combined plan measured to remove the latency asked (within the
    tenth the plan allows)."""
    from edgetune.compress.prune import prune_groups
    from edgetune.run import load_run
    from edgetune.stages.latency_plan import GRID

    out = tmp_path / "lat"
    assert (
        invoke(
            "prune",
            float_run,
            "--target-latency",
            "0.3",
            "--latency-precision",
            "fp32",
            "--latency-threads",
            "1",
            *PRUNE,
            "--out",
            out,
        )
        == 0
    )
    plan = json.loads((out / "latency_plan.json").read_text())
    groups = prune_groups(load_run(float_run).build_model())
    assert {(c["group"], c["ratio"]) for c in plan["candidates"]} == {(g, r) for g in groups for r in GRID}
    assert plan["runtime"] == "onnxruntime" and plan["precision"] == "fp32"
    assert plan["reduction"] >= 0.27 and plan["measured_ms"] == pytest.approx(plan["base_ms"] * (1 - plan["reduction"]))
    assert plan["rounds"][-1]["ratios"] == plan["ratios"] and any(r > 0 for r in plan["ratios"].values())
    m = json.loads((out / "run.json").read_text())["history"][-1]["metrics"]
    assert m["latency"]["ratios"] == plan["ratios"] and m["after"]["macs"] < m["before"]["macs"]


def test_target_latency_resumes_from_its_plan_without_timing_again(float_run, tmp_path):
    """A plan in OUT (as an interrupted run leaves it) is taken as it is: only the
    group it names loses channels, in a run that has no runtime timing to do."""
    out = tmp_path / "lat"
    out.mkdir()
    plan = {
        "target": 0.3,
        "runtime": "onnxruntime",
        "precision": "int8",
        "ratios": {"blocks.1": 0.5},
        "base_ms": 1.0,
        "measured_ms": 0.7,
        "reduction": 0.3,
    }
    (out / "latency_plan.json").write_text(json.dumps(plan))
    assert invoke("prune", float_run, "--target-latency", "0.3", *PRUNE, "--resume", "--out", out) == 0
    from edgetune.run import load_run

    before, after = _convs(load_run(float_run).build_model()), _convs(load_run(out).build_model())
    changed = {
        n.split(".")[0] + "." + n.split(".")[1] if n.startswith("blocks.") else n
        for n in after
        if after[n] != before[n]
    }
    assert "blocks.1" in changed and changed <= {"blocks.1", "blocks.2"}, (
        changed
    )  # blocks.2 takes blocks.1's narrower output


def test_latency_allocation_spends_loss_where_latency_falls_most():
    from edgetune.stages.latency_plan import _allocate

    # "a" saves 1 ms at 0.25 for a little loss; "b" saves nothing at 0.25 but 3 ms at
    # 0.5 for more; "c" saves as much as "a" at ten times the loss.
    saved = {
        "a": {0.0: 0, 0.25: 1.0, 0.5: 1.2, 0.75: 1.3},
        "b": {0.0: 0, 0.25: 0.0, 0.5: 3.0, 0.75: 3.5},
        "c": {0.0: 0, 0.25: 1.0, 0.5: 2.0, 0.75: 2.5},
    }
    added = {
        "a": {0.0: 0, 0.25: 0.01, 0.5: 0.1, 0.75: 0.5},
        "b": {0.0: 0, 0.25: 0.0, 0.5: 0.06, 0.75: 0.5},
        "c": {0.0: 0, 0.25: 0.1, 0.5: 0.2, 0.75: 0.4},
    }
    start = {"a": 0.0, "b": 0.0, "c": 0.0}
    assert _allocate(start, saved, added, goal=1.0) == {"a": 0.25, "b": 0.0, "c": 0.0}
    assert _allocate(start, saved, added, goal=3.5) == {"a": 0.25, "b": 0.5, "c": 0.0}
    assert _allocate(start, saved, added, goal=100) == {
        "a": 0.75,
        "b": 0.75,
        "c": 0.75,
    }  # everything, when the goal is out of reach
