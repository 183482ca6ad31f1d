"""Data sources, the split, bad images."""

import json
from pathlib import Path

import pytest
from conftest import TINY, invoke, make_images, run_cli

from edgetune.data.dataset import train_val_datasets
from edgetune.data.sources import load_source
from edgetune.data.split import Split, make_split
from edgetune.errors import EdgetuneError


def test_elpv_binary_and_four_class_sources():
    binary = load_source("elpv")
    assert len(binary.items) == 2624 and binary.classes == ["ok", "defective"]
    assert {it.stratum.split("-")[1] for it in binary.items} == {"mono", "poly"}
    four = load_source("elpv:4class")
    assert len(four.classes) == 4 and {it.target for it in four.items} == {0, 1, 2, 3}
    # binary: defective when p >= 0.5, so levels 2/3 and 1
    assert all((b.target == 1) == (f.target >= 2) for b, f in zip(binary.items, four.items))


def test_elpv_split_is_stratified_seeded_and_quarter_test():
    src = load_source("elpv")
    a, b = (
        make_split(src, seed=0, val_frac=0.15, test_frac=0.25),
        make_split(src, seed=0, val_frac=0.15, test_frac=0.25),
    )
    assert a.parts == b.parts
    assert len(a.parts["test"]) == 656
    strata = {it.path: it.stratum for it in src.items}
    for key in ("p0-mono", "p3-poly"):
        total = sum(s == key for s in strata.values())
        in_test = sum(strata[p] == key for p, _ in a.parts["test"])
        assert abs(in_test / total - 0.25) < 0.02
    assert make_split(src, seed=1, val_frac=0.15, test_frac=0.25).parts["test"] != a.parts["test"]


def test_elpv_soft_labels_are_the_defect_probabilities_and_travel_with_the_split(tmp_path):
    split = make_split(load_source("elpv"), seed=0, val_frac=0.15, test_frac=0.25)
    assert {tuple(round(v, 3) for v in t) for t in split.soft.values()} == {
        (1, 0),
        (0.667, 0.333),
        (0.333, 0.667),
        (0, 1),
    }
    assert all((t[1] >= 0.5) == y for p, y in split.parts["train"] for t in [split.soft[p]])
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").soft == split.soft
    assert "soft" not in make_split(load_source("elpv:4class"), 0, 0.15, 0.25).to_dict()


def test_soft_labels_become_training_targets_only_when_asked(tmp_path, caplog):
    from edgetune.data.augment import Augment
    from edgetune.runtime.preprocess import PreprocessSpec

    split = make_split(load_source(str(make_images(tmp_path, n_per_class=6, size=32))), 0, 0.2, 0.2)
    first = split.parts["train"][0][0]
    split.soft = {first: [0.25, 0.75]}  # the other images fall back to one-hot
    spec, aug = PreprocessSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), Augment.parse("none")
    hard_train, _ = train_val_datasets(split, spec, aug, soft_labels=False)
    soft_train, val = train_val_datasets(split, spec, aug, soft_labels=True)
    assert isinstance(hard_train[0][1], int) and isinstance(val[0][1], int)
    assert soft_train[0][1].tolist() == [0.25, 0.75]
    for i, (_, y) in enumerate(split.parts["train"][1:], 1):
        assert soft_train[i][1].tolist() == [float(c == y) for c in range(2)]
    split.soft = {}  # a source without probabilities: hard labels, and a warning
    assert isinstance(train_val_datasets(split, spec, aug, soft_labels=True)[0][0][1], int)
    assert "no label probabilities" in caplog.text


def test_csv_source_paths_are_relative_to_the_csv(tmp_path):
    make_images(tmp_path / "imgs", n_per_class=4)
    rows = ["path,label"] + [f"imgs/{c}/{c}_{i:03d}.png,{c}" for c in ("ok", "defect") for i in range(4)]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    src = load_source(str(tmp_path / "labels.csv"))
    assert src.classes == ["defect", "ok"] and len(src.items) == 8


@pytest.mark.parametrize("case", ["missing", "empty_class", "single_class", "csv_missing_file"])
def test_bad_sources_get_clear_errors(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty_class":
        make_images(root, n_per_class=3)
        (root / "scratch").mkdir()
    elif case == "single_class":
        make_images(root, n_per_class=3, classes=("ok",))
    elif case == "csv_missing_file":
        root = tmp_path / "labels.csv"
        root.write_text("path,label\nnope.png,ok\n")
    with pytest.raises(EdgetuneError) as e:
        load_source(str(root))
    assert str(root) in str(e.value) or "nope.png" in str(e.value)


@pytest.fixture
def folder_with_bad_images(tmp_path):
    root = make_images(tmp_path / "data", n_per_class=8)
    good = (root / "ok" / "ok_000.png").read_bytes()
    (root / "ok" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "ok" / "empty.png").write_bytes(b"")
    (root / "defect" / "notes.png").write_text("this is not an image\n")
    return root


def test_bad_images_are_all_listed_in_one_error(folder_with_bad_images, tmp_path):
    proc = run_cli(
        "finetune", "--data", folder_with_bad_images, *TINY, "--epochs", "1", "--out", tmp_path / "run", check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert "3 image(s) cannot be read" in err
    for name in ("truncated.png", "empty.png", "notes.png"):
        assert name in err
    assert "--skip-bad" in err


def test_skip_bad_skips_counts_and_records(folder_with_bad_images, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("finetune", "--data", folder_with_bad_images, *TINY, "--epochs", "1", "--skip-bad", "--out", out)
    assert "Skipped 3 unreadable" in " ".join(proc.stderr.split())
    split = json.loads((out / "split.json").read_text())
    assert sorted(p.rsplit("/", 1)[1] for p in split["skipped"]) == ["empty.png", "notes.png", "truncated.png"]
    used = {p for part in ("train", "val", "test") for p, _ in split[part]}
    assert not used & set(split["skipped"]) and len(used) == 16


def test_missing_data_folder_exits_2(tmp_path, capsys):
    assert invoke("finetune", "--data", tmp_path / "nowhere", *TINY, "--out", tmp_path / "run") == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_split_json_stores_paths_relative_to_the_source(tmp_path):
    """ELPV's images live in one virtualenv's site-packages: split.json must not
    name that folder, and must load in another environment (another recorded root)."""
    split = make_split(load_source("elpv"), seed=0, val_frac=0.15, test_frac=0.25)
    split.save(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["paths"] == "relative" and saved["source"] == "elpv"
    assert all(
        not p.startswith("/") and "site-packages" not in p for k in ("train", "val", "test") for p, _ in saved[k]
    )
    assert all(not p.startswith("/") for p in saved["soft"])
    saved["root"] = "/elsewhere/venv/lib/python3.11/site-packages/elpv_dataset/data"  # written by another environment
    (tmp_path / "split.json").write_text(json.dumps(saved))
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.parts == split.parts and loaded.soft == split.soft  # resolved against this environment's package
    assert all(Path(p).is_file() for p, _ in loaded.parts["test"][:20])


def test_old_split_json_with_absolute_paths_still_loads(tmp_path):
    folder = make_images(tmp_path / "imgs", n_per_class=4)
    split = make_split(load_source(str(folder)), 0, 0.25, 0.25)
    old = {k: v for k, v in split.to_dict().items() if k not in ("root", "paths")}
    for k in ("train", "val", "test"):
        old[k] = [[str(folder / p), y] for p, y in old[k]]
    (tmp_path / "split.json").write_text(json.dumps(old))
    assert Split.load(tmp_path / "split.json").parts == split.parts


def test_a_run_copied_elsewhere_evaluates_with_its_data_there(float_run, image_folder, tmp_path):
    """The run and its images copied to another place (another machine): `evaluate
    --data NEW_FOLDER` finds them there, with the same metrics."""
    import shutil

    from edgetune.run import load_run

    run = shutil.copytree(float_run, tmp_path / "run")
    data = shutil.copytree(image_folder, tmp_path / "data")
    saved = json.loads((run / "split.json").read_text())
    saved["source"] = saved["root"] = "/machine-a/images"  # as written on the other machine
    (run / "split.json").write_text(json.dumps(saved))
    assert all(p.startswith(str(data)) for p, _ in load_run(run, str(data)).split.parts["test"])
    assert invoke("evaluate", run, "--data", data, "--json", tmp_path / "m.json") == 0
    want = json.loads((float_run / "run.json").read_text())["history"][-1]["metrics"]["test"]["accuracy"]
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == pytest.approx(want)
