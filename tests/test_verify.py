"""`edgetune verify`: the device path against the training path."""

from __future__ import annotations

import json

from conftest import invoke, make_fp32_bundle


def test_verify_passes_a_faithful_bundle_and_catches_a_wrong_channel_order(
    float_run, fp32_bundle, image_folder, tmp_path, capsys
):
    good = tmp_path / "good.json"
    assert invoke("verify", fp32_bundle, "--images", image_folder, "--json", good) == 0
    r = json.loads(good.read_text())
    assert r["passed"] and r["agreement"] == 1.0 and r["max_rel_diff"] < 1e-3 and r["n"] == 60
    assert r["spec_differences"] == {}
    # The same model, but the manifest says the model wants BGR (re-hashed: a valid bundle).
    bgr = make_fp32_bundle(float_run, tmp_path / "bgr", channel_order="BGR")
    bad = tmp_path / "bad.json"
    capsys.readouterr()
    assert invoke("verify", bgr, "--images", image_folder, "--json", bad) == 1
    r = json.loads(bad.read_text())
    assert not r["passed"] and r["max_rel_diff"] > 0.01
    assert r["spec_differences"]["channel_order"] == ["RGB", "BGR"]
    err = capsys.readouterr().err
    assert "channel_order is RGB in the run but BGR in the bundle" in err and "Parity check failed" in err


def test_verify_usage_errors(fp32_bundle, float_run, tmp_path, capsys):
    assert invoke("verify", fp32_bundle, "--images", tmp_path / "nowhere") == 2
    assert "--images" in capsys.readouterr().err
    assert invoke("verify", float_run, "--images", tmp_path) == 2
    assert "takes a bundle" in capsys.readouterr().err
