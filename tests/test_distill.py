"""Knowledge distillation in pruning recovery and QAT: the teacher is followed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import invoke

TRAIN = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--warmup-epochs", "0"]
COMMANDS = {"prune": ["--ratio", "0.25"], "quantize": ["--mode", "qat"]}


@pytest.fixture(scope="module")
def contrary_teacher(tmp_path_factory, float_run):
    """`float_run` with its two classifier rows swapped: a run that predicts the
    other class wherever the float model is right."""
    out = tmp_path_factory.mktemp("runs") / "contrary"
    shutil.copytree(float_run, out)
    state = torch.load(out / "model.pt", weights_only=True)
    for key in ("classifier.weight", "classifier.bias"):
        state[key] = state[key].flip(0)
    torch.save(state, out / "model.pt")
    return out


def _test_accuracy(run):
    return json.loads((run / "run.json").read_text())["history"][-1]["metrics"]["test"]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_the_student_follows_its_teacher(command, float_run, contrary_teacher, tmp_path):
    # Labels weigh nothing at --distill 1: a student taught by the contrary
    # teacher unlearns what the float model knows. Its last epoch is kept: the
    # best on the validation labels would be the least taught one (for QAT, the
    # calibrated model itself).
    before = _test_accuracy(float_run)
    assert before >= 0.8
    out = tmp_path / "student"
    assert (
        invoke(
            command,
            float_run,
            *COMMANDS[command],
            *TRAIN,
            "--distill",
            "1",
            "--teacher",
            contrary_teacher,
            "--keep",
            "last",
            "--out",
            out,
        )
        == 0
    )
    assert _test_accuracy(out) <= before - 0.3
    config = json.loads((out / "run.json").read_text())["history"][-1]["config"]
    assert config["distill"] == 1.0 and config["teacher"] == str(contrary_teacher)


def test_a_teacher_with_other_classes_is_refused(float_run, tmp_path, capfd):
    other = tmp_path / "other"
    shutil.copytree(float_run, other)
    info = json.loads((other / "run.json").read_text())
    info["classes"] = ["cat", "dog"]
    (other / "run.json").write_text(json.dumps(info))
    assert (
        invoke(
            "prune",
            float_run,
            "--ratio",
            "0.25",
            *TRAIN,
            "--distill",
            "0.5",
            "--teacher",
            other,
            "--out",
            tmp_path / "p",
        )
        == 2
    )
    err = capfd.readouterr().err
    assert f"--teacher {other}" in err and "['cat', 'dog']" in err
