"""Fine-tune then evaluate through the CLI; kill and resume; freeze policies."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import EDGETUNE, TINY, invoke, make_images, run_cli

from edgetune.models.backbone import create_backbone
from edgetune.models.freeze import apply_freeze, parameter_groups
from edgetune.tasks.classification.hooks import ClassifierHooks


def test_finetune_then_evaluate(float_run, tmp_path):
    info = json.loads((float_run / "run.json").read_text())
    assert info["stage"] == "float" and info["classes"] == ["defect", "ok"]
    assert json.loads((float_run / "preprocess.json").read_text())["size"] == [32, 32]
    proc = run_cli("evaluate", float_run, "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["accuracy"] >= 0.8, m  # the generated classes are easy
    assert m["n"] == len(json.loads((float_run / "split.json").read_text())["test"])
    assert sum(map(sum, m["confusion_matrix"])) == m["n"]
    assert {"roc_auc", "threshold", "balanced_accuracy", "f1"} <= set(m)
    assert len(m["predictions"]) == m["n"]
    for png in ("confusion_test.png", "mistakes_test.png"):
        assert (float_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in proc.stdout + proc.stderr


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert invoke("evaluate", tmp_path) == 2
    assert "not an edgetune run" in capsys.readouterr().err


def test_finished_run_is_not_overwritten(float_run, capsys):
    assert invoke("finetune", "--data", "elpv", *TINY, "--out", float_run) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def _last_epoch(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not written yet, or being replaced
        return -1


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_epochs(image_folder, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--data", image_folder, *TINY, "--epochs", "4", "--out", out]
    proc = subprocess.Popen([*EDGETUNE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _last_epoch(out / "ckpt" / "last.pt") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _last_epoch(out / "ckpt" / "last.pt")
    assert 1 <= done < 4 and not (out / "run.json").exists()  # tiny epochs: a later one may end before the kill lands
    assert run_cli(*args, check=False).returncode == 2  # an interrupted run needs --resume
    run_cli(*args, "--resume")
    epochs = json.loads((out / "run.json").read_text())["history"][0]["metrics"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "policy, epoch, trainable", [("head", 0, 1), ("last:2", 0, 3), ("gradual:2", 0, 1), ("gradual:2", 4, 3)]
)
def test_freeze_policies(policy, epoch, trainable):
    model = create_backbone("test_resnet", 2, pretrained=False)
    groups = parameter_groups(model)
    apply_freeze(model, policy, epoch)
    train = {n for n, p in model.named_parameters() if p.requires_grad}
    assert train == {n for g in groups[len(groups) - trainable :] for n in g}
    apply_freeze(model, "full", 0)
    assert all(p.requires_grad for p in model.parameters())


def test_detector_and_segmenter_stages_run_from_the_backbone_stem_to_their_own_layers():
    # A detector or segmenter is not a timm model: without its own stages, --freeze head
    # would train the last two tensors only, and --layer-decay would slow the neck too.
    from edgetune.tasks.detect.model import create_detector
    from edgetune.tasks.segment.model import build_segmenter

    for model, backbone, own in [
        (create_detector("test_efficientnet", ["a", "b"], (64, 64), False), "backbone.", ("neck.", "head.")),
        (build_segmenter("test_efficientnet", 3, False), "features.", ("lateral.", "fuse.", "head.")),
    ]:
        groups = parameter_groups(model)
        assert len(groups) >= 4 and groups[0][0].startswith(backbone + "conv_stem")
        assert all(n.startswith(backbone) for g in groups[:-1] for n in g)
        assert groups[-1] and all(n.startswith(own) for n in groups[-1])
        blocks = [int(g[0].split(".")[2]) for g in groups if g[0].startswith(backbone + "blocks.")]
        assert blocks == sorted(blocks) and len(blocks) >= 2  # one group per stage, in order
        apply_freeze(model, "head", 0)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == set(groups[-1])


def test_bad_freeze_policy_and_weights(tmp_path, image_folder, capsys):
    assert invoke("finetune", "--data", image_folder, *TINY, "--freeze", "most", "--out", tmp_path / "r") == 2
    assert "--freeze 'most'" in capsys.readouterr().err
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    assert (
        invoke("finetune", "--data", image_folder, *TINY, "--weights", tmp_path / "w.pt", "--out", tmp_path / "r2") == 2
    )
    err = capsys.readouterr().err
    assert "w.pt" in err and "not a loadable state dict" in err
    assert invoke("finetune", "--data", image_folder, *TINY, "--device", "gpu", "--out", tmp_path / "r3") == 2
    err = capsys.readouterr().err
    assert "--device 'gpu'" in err and "cuda:N" in err and "Traceback" not in err


def test_weights_from_a_run_keep_its_head_only_when_the_classes_fit(tmp_path):
    trained = create_backbone("test_efficientnet", 2, pretrained=False)
    torch.nn.init.normal_(trained.get_classifier().weight)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    same = create_backbone("test_efficientnet", 2, weights=tmp_path / "w.pt")
    assert torch.equal(same.get_classifier().weight, trained.get_classifier().weight)
    other = create_backbone("test_efficientnet", 3, weights=tmp_path / "w.pt")
    assert other.get_classifier().weight.shape[0] == 3
    assert torch.equal(other.conv_stem.weight, trained.conv_stem.weight)


def test_the_loop_fits_soft_targets(tmp_path):
    """Trained on 85/15 targets for every image, a model moves towards saying 85%
    "ok" to each; trained on the same (balanced) hard labels, it does not."""
    from edgetune.data.augment import Augment
    from edgetune.data.dataset import train_val_datasets
    from edgetune.data.sources import load_source
    from edgetune.data.split import make_split
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.train.loop import TrainConfig, fit, predict

    split = make_split(load_source(str(make_images(tmp_path / "data", n_per_class=12, size=32))), 0, 0.2, 0.2)
    spec, aug = PreprocessSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), Augment.parse("none")
    cfg = TrainConfig(epochs=10, batch_size=4, lr=1e-2, warmup_epochs=0, label_smoothing=0.0)
    p_ok = {}
    for soft in (False, True):
        split.soft = {p: [0.85, 0.15] for p, _ in split.parts["train"]} if soft else {}
        torch.manual_seed(0)
        model = create_backbone("test_efficientnet", 2, pretrained=False)
        train, val = train_val_datasets(split, spec, aug, soft_labels=soft)
        fit(model, train, val, ClassifierHooks(split.classes, cfg, train.labels), cfg, tmp_path / f"ckpt{soft}")
        # the last epoch's weights: "best" picks by val accuracy, flat for a constant answer
        model.load_state_dict(torch.load(tmp_path / f"ckpt{soft}" / "last.pt", weights_only=True)["model"])
        logits, _ = predict(model, torch.utils.data.DataLoader(train, batch_size=16))
        p_ok[soft] = float(torch.softmax(torch.from_numpy(logits), 1)[:, 0].mean())
    assert p_ok[True] > 0.65 and p_ok[True] - p_ok[False] > 0.15, p_ok


def test_same_seed_same_model(image_folder, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, seeds in zip(runs, (["0"], ["0"], ["1", "--split-seed", "0"])):
        assert invoke("finetune", "--data", image_folder, *TINY, "--epochs", "1", "--seed", *seeds, "--out", out) == 0
    a, b, c = (torch.load(r / "model.pt", weights_only=True) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # --split-seed keeps the images of each part while --seed changes the training
    split_a, split_c = (json.loads((r / "split.json").read_text()) for r in (runs[0], runs[2]))
    assert [split_a[k] for k in ("train", "val", "test")] == [split_c[k] for k in ("train", "val", "test")]


def test_the_loop_hands_back_the_default_memory_layout(tmp_path):
    """fit trains in channels_last for speed; what callers save and export must be
    in the default layout, with the outputs of the same weights."""
    from edgetune.data.augment import Augment
    from edgetune.data.dataset import train_val_datasets
    from edgetune.data.sources import load_source
    from edgetune.data.split import make_split
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.train.loop import TrainConfig, fit

    split = make_split(load_source(str(make_images(tmp_path / "data", n_per_class=8, size=32))), 0, 0.25, 0.25)
    spec = PreprocessSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    model = create_backbone("test_efficientnet", 2, pretrained=False)
    cfg = TrainConfig(epochs=1, batch_size=4)
    train, val = train_val_datasets(split, spec, Augment.parse("none"), False)
    fit(model, train, val, ClassifierHooks(split.classes, cfg, train.labels), cfg, tmp_path / "ckpt")
    assert all(p.is_contiguous() for p in model.parameters())
    saved = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    fresh = create_backbone("test_efficientnet", 2, pretrained=False)
    fresh.load_state_dict(saved)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), fresh.eval()(x), atol=1e-5)


def test_ema_validates_and_keeps_the_average_of_the_weights(tmp_path):
    from edgetune.data.augment import Augment
    from edgetune.data.dataset import train_val_datasets
    from edgetune.data.sources import load_source
    from edgetune.data.split import make_split
    from edgetune.errors import EdgetuneError
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.train.loop import TrainConfig, fit

    split = make_split(load_source(str(make_images(tmp_path / "data", n_per_class=8, size=32))), 0, 0.25, 0.25)
    data = train_val_datasets(
        split, PreprocessSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), Augment.parse("none"), False
    )
    model = create_backbone("test_efficientnet", 2, pretrained=False)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0, ema=0.9, metric="loss")
    result = fit(model, *data, ClassifierHooks(split.classes, cfg, data[0].labels), cfg, tmp_path / "ckpt")
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())  # handed back: the kept average
    assert not all(torch.equal(v, last["model"][k]) for k, v in last["ema"].items())  # the average lags the weights
    if result.best_epoch == 2:
        assert all(torch.equal(v, last["ema"][k]) for k, v in best.items())
    with pytest.raises(EdgetuneError, match="--ema 1.5"):
        bad = TrainConfig(epochs=1, ema=1.5)
        fit(model, *data, ClassifierHooks(split.classes, bad, data[0].labels), bad, tmp_path / "ckpt2")
    # --keep last: the last epoch's average, whichever epoch validated best
    model = create_backbone("test_efficientnet", 2, pretrained=False)
    cfg.keep = "last"
    result = fit(model, *data, ClassifierHooks(split.classes, cfg, data[0].labels), cfg, tmp_path / "ckpt3")
    last = torch.load(tmp_path / "ckpt3" / "last.pt", weights_only=True)
    assert result.kept_epoch == 2 and all(torch.equal(v, last["ema"][k]) for k, v in model.state_dict().items())


def test_the_starting_weights_compete_with_every_epoch_when_scored(tmp_path):
    """QAT's fit validates the calibrated model first: an epoch that validates worse
    (here a learning rate that wrecks the weights) does not replace it."""
    import copy

    from edgetune.data.augment import Augment
    from edgetune.data.dataset import train_val_datasets
    from edgetune.data.sources import load_source
    from edgetune.data.split import make_split
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.train.loop import TrainConfig, fit

    split = make_split(load_source(str(make_images(tmp_path / "data", n_per_class=8, size=32))), 0, 0.25, 0.25)
    data = train_val_datasets(
        split, PreprocessSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), Augment.parse("none"), False
    )
    cfg = TrainConfig(epochs=1, batch_size=4, lr=50.0, optimizer="sgd", warmup_epochs=0, metric="loss")
    start = create_backbone("test_efficientnet", 2, pretrained=False)
    for score_start, ckpt in ((False, "plain"), (True, "scored")):
        model = copy.deepcopy(start)
        hooks = ClassifierHooks(split.classes, cfg, data[0].labels)
        result = fit(model, *data, hooks, cfg, tmp_path / ckpt, score_start=score_start)
        same = all(torch.equal(v, start.state_dict()[k]) for k, v in model.state_dict().items())
        assert (result.kept_epoch, same) == ((0, True) if score_start else (1, False))


def test_layer_decay_lowers_each_stage_rate_below_the_one_above():
    from edgetune.errors import EdgetuneError
    from edgetune.train.loop import TrainConfig, _optimizer

    model = create_backbone("test_efficientnet", 2, pretrained=False)
    stages, params = parameter_groups(model), dict(model.named_parameters())
    lr_of = {
        id(p): g["lr"]
        for g in _optimizer(model, TrainConfig(lr=1e-2, layer_decay=0.5)).param_groups
        for p in g["params"]
    }
    assert len(stages) >= 3
    for i, names in enumerate(stages):  # the head (last) at lr, halved with each stage further down
        assert [lr_of[id(params[n])] for n in names] == pytest.approx(
            [1e-2 * 0.5 ** (len(stages) - 1 - i)] * len(names)
        )
    groups = _optimizer(model, TrainConfig(lr=1e-2)).param_groups
    assert {g["lr"] for g in groups} == {1e-2}
    assert {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]} == {
        id(p) for p in params.values() if p.ndim == 1
    }
    with pytest.raises(EdgetuneError, match="--layer-decay 0"):
        _optimizer(model, TrainConfig(layer_decay=0))


def test_mixup_blends_each_image_with_the_one_whose_label_it_also_learns(tmp_path):
    from edgetune.data.augment import Augment
    from edgetune.data.dataset import train_val_datasets
    from edgetune.data.sources import load_source
    from edgetune.data.split import make_split
    from edgetune.errors import EdgetuneError
    from edgetune.runtime.preprocess import PreprocessSpec
    from edgetune.tasks.classification.hooks import mixup
    from edgetune.train.loop import TrainConfig, fit

    # image i is the constant i, so a blend's value tells which image it was mixed with
    x, y = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 4, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    torch.manual_seed(0)
    mixed, y_other, lam = mixup(x, y, torch.distributions.Beta(0.4, 0.4))
    assert 0 < lam < 1 and lam != 0.5
    partner = ((mixed[:, 0, 0, 0] - lam * torch.arange(6.0)) / (1 - lam)).round().long()
    assert sorted(partner.tolist()) == list(range(6)) and torch.equal(y_other, y[partner])
    assert torch.allclose(mixed[:, 0, 0, 0], lam * torch.arange(6.0) + (1 - lam) * partner)

    # in the loop: seeded like the augmentations (a resumed epoch draws the same), and it changes what is learnt
    split = make_split(load_source(str(make_images(tmp_path / "data", n_per_class=8, size=32))), 0, 0.25, 0.25)
    data = train_val_datasets(
        split, PreprocessSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), Augment.parse("none"), False
    )
    weights = {}
    for name, alpha in (("a", 0.2), ("b", 0.2), ("plain", 0.0)):
        torch.manual_seed(0)
        model = create_backbone("test_efficientnet", 2, pretrained=False)
        cfg = TrainConfig(epochs=1, batch_size=4, mixup=alpha, keep="last")
        fit(model, *data, ClassifierHooks(split.classes, cfg, data[0].labels), cfg, tmp_path / name)
        weights[name] = model.state_dict()
    assert all(torch.equal(v, weights["b"][k]) for k, v in weights["a"].items())
    assert not all(torch.equal(v, weights["plain"][k]) for k, v in weights["a"].items())
    with pytest.raises(EdgetuneError, match="--mixup -1"):
        bad = TrainConfig(epochs=1, mixup=-1)
        fit(model, *data, ClassifierHooks(split.classes, bad, data[0].labels), bad, tmp_path / "bad")


def test_flip_tta_averages_the_four_views_and_ignores_flips_of_the_input():
    from edgetune.models.tta import FlipTTA

    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", num_classes=3, pretrained=False).eval()
    tta = FlipTTA(model, "flips")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(
            model(x), model(torch.flip(x, (3,))), atol=1e-4
        )  # the model alone is not flip-invariant
        views = [model(v).softmax(-1) for v in (x, torch.flip(x, (3,)), torch.flip(x, (2,)), torch.flip(x, (2, 3)))]
        torch.testing.assert_close(tta(x).exp(), torch.stack(views).mean(0))
        for dims in ((2,), (3,), (2, 3)):
            torch.testing.assert_close(tta(torch.flip(x, dims)), tta(x), atol=1e-5, rtol=1e-4)


def test_evaluate_with_tta_keeps_the_single_view_metrics(float_run, tmp_path, capsys):
    assert invoke("evaluate", float_run) == 0
    single = json.loads((float_run / "eval_test.json").read_text())
    assert invoke("evaluate", float_run, "--tta", "flips", "--json", tmp_path / "tta.json") == 0
    m = json.loads((tmp_path / "tta.json").read_text())
    assert m["tta"] == "flips" and single["tta"] == "none" and m["n"] == single["n"]
    assert json.loads((float_run / "eval_test.json").read_text()) == single
    assert json.loads((float_run / "eval_test_tta-flips.json").read_text()) == m
    assert (float_run / "mistakes_test_tta-flips.png").is_file()
    assert "test-time augmentation flips" in " ".join(capsys.readouterr().err.split())  # the table title says so
