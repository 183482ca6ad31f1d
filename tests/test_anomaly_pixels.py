"""The anomaly task against true masks (pixel AUROC and PRO) and its bank search:
the rows chosen by cost, INT8 where it keeps the distances, the search's share of
the latency in the build's record."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from anomaly_helpers import SIZE, draw_defect, quantization_record, texture
from conftest import ort_optimized, run_cli

MODEL = ["--model", "test_resnet", "--no-pretrained", "--img-size", str(SIZE)]


def direct_pro(maps, masks, limit=0.3):
    """PRO counted threshold by threshold: every distinct score, the regions' mean
    overlap and the normal pixels' false-positive rate; the same integration."""
    regions = []
    for i, m in enumerate(masks):
        n, labels = cv2.connectedComponents(m.astype(np.uint8))
        regions += [(i, labels == r) for r in range(1, n)]
    normal = masks == 0
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        fpr.append(flagged[normal].mean())
        pro.append(np.mean([flagged[i][r].mean() for i, r in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    j = int(keep.sum())
    if x[-1] < limit:
        x, y = np.r_[x, limit], np.r_[y, np.interp(limit, fpr[j - 1 : j + 1], pro[j - 1 : j + 1])]
    return np.trapezoid(y, x) / limit


def test_pixel_auroc_and_pro_on_generated_masks():
    from sklearn.metrics import roc_auc_score

    from edgetune.tasks.anomaly.metrics import pixel_metrics

    rng = np.random.default_rng(0)
    masks = np.zeros((5, 24, 24), np.uint8)
    masks[0, 2:6, 2:9] = 1
    masks[0, 15:20, 15:17] = 1  # two regions in one image: PRO weighs each region alike
    masks[2, 10:22, 3:7] = 1
    maps = rng.random(masks.shape).astype(np.float32) + 0.6 * masks * rng.random(masks.shape)
    m = pixel_metrics(maps, masks)
    assert m["regions"] == 3
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert m["pro"] == pytest.approx(direct_pro(maps, masks), abs=1e-9)
    assert 0.5 < m["pixel_auroc"] < 1 and 0 < m["pro"] < 1
    assert pixel_metrics(masks.astype(np.float32), masks)["pro"] == pytest.approx(1.0)
    assert pixel_metrics(-maps, masks)["pixel_auroc"] < 0.5
    assert pixel_metrics(maps, np.zeros_like(masks)) == {"pixel_auroc": None, "pro": None, "regions": 0}


def tiles(root, n_good=44, n_bad=12, seed=0):
    """Generated textures in the magnetic-tile layout: MT_<Class>/Imgs/NAME.jpg with
    its mask NAME.png beside it (0 background, 255 defect)."""
    rng = np.random.default_rng(seed)
    for cls, n in (("MT_Free", n_good), ("MT_Scratch", n_bad)):
        folder = root / cls / "Imgs"
        folder.mkdir(parents=True)
        for i in range(n):
            img = texture(rng)
            mask = draw_defect(rng, img) if cls != "MT_Free" else np.zeros(img.shape, np.uint8)
            cv2.imwrite(str(folder / f"t{i:03d}.jpg"), np.clip(img, 0, 255).astype(np.uint8))
            cv2.imwrite(str(folder / f"t{i:03d}.png"), mask * 255)
    return root


@pytest.mark.slow
def test_masks_beside_the_images_give_pixel_metrics_and_a_gallery_with_the_truth(tmp_path):
    data, run = tiles(tmp_path / "tiles"), tmp_path / "run"
    run_cli(
        "finetune", "--task", "anomaly", "--data", data, "--normal", "MT_Free", *MODEL, "--image-score", "--out", run
    )
    record = json.loads((run / "run.json").read_text())
    assert record["classes"] == ["normal", "anomalous"]
    assert record["history"][-1]["metrics"]["bank"]["image"]["rows"] > 0  # evaluate below restores it
    test = record["history"][-1]["metrics"]["test"]
    # the masks are not images: 56 tiles, not 112
    split = json.loads((run / "split.json").read_text())
    assert sum(len(split[k]) for k in ("train", "val", "test")) == 56
    assert test["auroc"] >= 0.9 and test["pixel_auroc"] >= 0.9 and test["pro"] >= 0.5, test
    assert test["regions"] == test["n_anomalous"]  # one drawn defect a tile
    proc = run_cli("evaluate", run)
    assert "pixel AUROC" in proc.stderr and "PRO" in proc.stderr
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["pixel_auroc"] == pytest.approx(test["pixel_auroc"], abs=1e-6)
    assert evaluated["auroc"] == pytest.approx(test["auroc"], abs=1e-6)
    assert evaluated["gallery"]["true_masks"] and cv2.imread(evaluated["files"]["gallery"]) is not None


def test_bank_rows_are_bounded_by_what_the_search_costs():
    from edgetune.models.stats import count_macs
    from edgetune.tasks.anomaly.fit import bank_rows
    from edgetune.tasks.anomaly.patchcore import build_patchcore, rows_for_cost

    model = build_patchcore("test_resnet", (SIZE, SIZE), pretrained=False)
    cap = rows_for_cost(model)
    macs, _ = count_macs(model.embedder, (SIZE, SIZE))
    patches = model.grid[0] * model.grid[1]
    assert cap * patches * model.dim <= macs < (cap + 1) * patches * model.dim
    assert bank_rows(model, 10, 0.1, None) == (round(10 * patches * 0.1), "--coreset")
    assert bank_rows(model, 10_000, 0.1, None) == (cap, "search cost")
    assert bank_rows(model, 10_000, 0.1, 123) == (123, "--bank-rows")


def test_the_coreset_picked_in_rounds_is_the_greedy_k_center_bank():
    """Rounds only make the greedy faster: the bank is the plain greedy's, each of whose
    picks is the row farthest from those picked before it (counted here directly)."""
    import torch

    from edgetune.tasks.anomaly.patchcore import greedy_coreset

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 64, generator=gen) * 3  # clustered, as patch features are
    rows = centres[torch.randint(40, (4000,), generator=gen)] + torch.randn(4000, 64, generator=gen)
    plain = greedy_coreset(rows, 120, seed=0, batch=1)
    for batch in (8, 32):
        assert set(greedy_coreset(rows, 120, seed=0, batch=batch).tolist()) == set(plain.tolist())
    nearest = torch.cdist(rows, rows[plain[:1]]).squeeze(1)
    for i in plain[1:].tolist():
        assert nearest[i] >= nearest.max() - 1e-4
        nearest = torch.minimum(nearest, torch.cdist(rows, rows[i : i + 1]).squeeze(1))


def test_image_score_adds_the_nearest_normal_image_weighted_by_each_distances_spread():
    import torch

    from edgetune.tasks.anomaly.fit import SPREAD_IMAGES, fit_image_bank
    from edgetune.tasks.anomaly.patchcore import build_patchcore

    rng = np.random.default_rng(0)
    torch.manual_seed(0)  # the random network's weights
    good = torch.from_numpy(np.stack([texture(rng) for _ in range(24)])[:, None].repeat(3, 1) / 255 - 0.5).float()
    model = build_patchcore("test_resnet", (SIZE, SIZE), pretrained=False, image_bank=True)
    with torch.no_grad():
        emb, images = model.embedder.embed(good)
    hw = emb.shape[2] * emb.shape[3]
    patches = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
    idx = torch.from_numpy(rng.choice(len(patches), 200, replace=False))
    model.set_bank(patches[idx])
    record = fit_image_bank(model, emb, images, idx, seed=0)
    assert record["rows"] == 24 and len(good) <= SPREAD_IMAGES

    # Each image dimension is divided by its spread over the good images (floored: a channel
    # that a random network leaves dead must not divide by zero).
    sd, scale = images.std(0, unbiased=False), model.embedder.stats.scale
    alive = sd > 0.01 * sd.mean()
    assert (~alive).any() and torch.isfinite(scale).all() and torch.allclose(scale[alive], 1 / sd[alive], rtol=1e-4)
    z = images * scale
    # The spreads, counted directly: every image left out of both banks.
    patch_d, image_d = [], []
    for i in range(len(good)):
        others = [r for r, k in enumerate(idx.tolist()) if k // hw != i]
        q = emb[i].flatten(1).T
        patch_d.append(torch.cdist(q, patches[idx][others]).amin(1).amax())
        image_d.append(torch.cdist(z[i : i + 1], z[torch.arange(len(z)) != i]).amin())
    spreads = [float(torch.stack(patch_d).std()), float(torch.stack(image_d).std())]
    assert record["spreads"] == pytest.approx(spreads, rel=1e-3)
    w_patch, w_image = record["weights"]
    assert w_patch == pytest.approx(1 / record["spreads"][0], rel=1e-4)

    # A tile-wide change, no local defect: the image distance grows, and the score is the weighted sum.
    darker = good[:4] * 0.6
    with torch.no_grad():
        score, _ = model(darker)
        emb_d, images_d = model.embedder.embed(darker)
    patch = torch.cdist(emb_d.flatten(2).transpose(1, 2), patches[idx]).amin(-1).amax(-1)
    image = torch.cdist(images_d, z).amin(-1)  # the embedder scales them now
    assert torch.allclose(score, w_patch * patch + w_image * image, rtol=1e-3)
    assert image.min() > torch.stack(image_d).max()  # farther than any good tile from its nearest other


def test_patch_features_fine_are_patchcores_and_coarse_the_stride_16_map_upsampled():
    import torch
    import torch.nn.functional as F

    from edgetune.tasks.anomaly.patchcore import build_patchcore

    x = torch.randn(2, 3, SIZE, SIZE)
    fine = build_patchcore("test_resnet", (SIZE, SIZE), pretrained=False)
    coarse = build_patchcore("test_resnet", (SIZE, SIZE), pretrained=False, features="coarse")
    coarse.embedder.features.load_state_dict(fine.embedder.features.state_dict(), strict=False)
    with torch.no_grad():
        s8, s16 = fine.embedder.features(x)
        assert torch.equal(coarse.embedder.features(x)[0], s16)  # the same weights, the stride-16 stage alone
        expected = F.interpolate(s16, scale_factor=2, mode="bilinear", align_corners=False)
        assert torch.allclose(coarse.embedder(x), expected, atol=1e-5)
        pooled = [F.avg_pool2d(m, 3, 1, 1) for m in (s8, s16)]
        up = F.interpolate(pooled[1], size=s8.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.allclose(fine.embedder(x), torch.cat([pooled[0], up], 1), atol=1e-5)
    assert coarse.grid == fine.grid == tuple(s8.shape[-2:])  # the same stride-8 grid, the map's
    assert coarse.dim == s16.shape[1] < fine.dim


def test_state_saved_before_the_search_was_a_linear_still_loads():
    import torch

    from edgetune.tasks.anomaly.patchcore import build_patchcore, upgrade_state

    bank = torch.randn(30, 240)
    model = build_patchcore("test_resnet", (SIZE, SIZE), pretrained=False, bank=bank)
    state = {k[len("patches.") :]: v for k, v in model.state_dict().items() if k.startswith("patches.embedder.")}
    centred = bank - bank.mean(0)
    old = {**state, "bank_mean": bank.mean(0), "bank_t": centred.t(), "bank_sq": (centred * centred).sum(1)}
    old.update({k: v for k, v in model.state_dict().items() if k.startswith("blur_")})
    fresh = build_patchcore("test_resnet", (SIZE, SIZE), pretrained=False, bank=torch.zeros(30, 240))
    fresh.load_state_dict(upgrade_state(old))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(fresh(x)[0], model(x)[0], atol=1e-4)
    assert torch.allclose(fresh.patches.search.bank, bank, atol=1e-5)


@pytest.mark.slow
def test_coarse_patch_features_fit_and_reload_from_the_run(tmp_path):
    data, run = tiles(tmp_path / "tiles"), tmp_path / "run"
    options = ["--normal", "MT_Free", *MODEL, "--patch-features", "coarse"]
    run_cli("finetune", "--task", "anomaly", "--data", data, *options, "--out", run)
    record = json.loads((run / "run.json").read_text())
    assert record["anomaly"]["patch_features"] == "coarse"
    test = record["history"][-1]["metrics"]["test"]
    assert test["auroc"] >= 0.9, test
    run_cli("evaluate", run)  # restores the coarse embedding from the run's record, or its bank would not fit
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["auroc"] == pytest.approx(test["auroc"], abs=1e-6)
    assert evaluated["pixel_auroc"] == pytest.approx(test["pixel_auroc"], abs=1e-6)


@pytest.mark.slow
def test_int8_search_runs_on_integer_kernels_where_it_keeps_the_distances(anomaly_build, tmp_path, monkeypatch):
    import onnx

    import edgetune.tasks.anomaly.export as export
    from edgetune.export.checks import tensorrt_problems
    from edgetune.run import load_run

    # The generated textures lie so close to their bank that INT8 would move the distances
    # by about 1%: the build kept that search float, and says so.
    manifest = json.loads((anomaly_build / "bundle-cpu" / "manifest.json").read_text())
    exported, quantization = quantization_record(manifest)
    assert quantization["search"] == "fp32" and quantization["search_error"] > export.MAX_SEARCH_ERROR
    search = exported["fp32"]["search"]
    assert 0 <= search["share"] < 1 and search["without_ms_p50"] <= search["fp32_ms_p50"] * 1.5

    monkeypatch.setattr(export, "MAX_SEARCH_ERROR", 1.0)  # where it keeps them, the search is INT8
    run = load_run(anomaly_build / "finetune")
    model, record = export.quantized_patchcore(run)
    assert record["search"] == "int8"
    for activations in ("uint8", "keep"):  # checked against PyTorch on real images (Spearman)
        path = tmp_path / f"{activations}.onnx"
        export.export_patchcore(run, path, "int8", activations=activations, model=model)
    ops = {n.op_type for n in ort_optimized(tmp_path / "uint8.onnx", tmp_path).graph.node}
    assert "MatMulIntegerToFloat" in ops  # the bank product on integer kernels
    problems, _ = tensorrt_problems(onnx.load(str(tmp_path / "keep.onnx")))
    assert problems == []
    # OpenVINO's low-precision transformations take the int8 search too, to the same scores
    import openvino as ov
    from scipy.stats import spearmanr

    from edgetune.export.checks import ort_session
    from edgetune.export.graph import _check_images

    x = _check_images(run, 32)
    compiled = ov.Core().compile_model(str(tmp_path / "keep.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x)[compiled.output("score")]
    want = ort_session(tmp_path / "keep.onnx").run(["score"], {"input": x})[0]
    assert spearmanr(got, want).statistic > 0.95 and np.abs(got - want).max() < 0.1 * np.abs(want).max()
