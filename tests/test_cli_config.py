"""The CLI shell: lazy imports, YAML config with CLI precedence, errors for bad keys."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom edgetune.cli.main import cli, COMMANDS\n"
        "for args in [['--help']] + [[name, '--help'] for name in COMMANDS] + [['engine', 'build', '--help']]:\n"
        "    r = CliRunner().invoke(cli, args)\n    assert r.exit_code == 0, (args, r.output)\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'nncf', 'torchvision', 'onnx', 'openvino') if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_yaml_values_apply_and_cli_flags_override(tmp_path, image_folder):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump({"seed": 7, "img-size": 40, "finetune": {"epochs": 3, "lr": 0.002, "batch-size": 12}})
    )
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--img-size", "32", "--batch-size", "8", "--lr", "3e-3")]
    run_cli("--config", cfg, "finetune", "--data", image_folder, *args, "--epochs", "1", "--out", out)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["epochs"] == 1  # the flag beats the file
    assert resolved["seed"] == 7 and resolved["img-size"] == 40  # shared top-level keys
    assert resolved["lr"] == 0.002 and resolved["batch-size"] == 12  # the command's section
    assert yaml.safe_load((out / "split.json").read_text())["seed"] == 7


def _config_error(tmp_path, content: dict, *args):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(content))
    proc = run_cli("--config", cfg, *args, "finetune", "--out", tmp_path / "never", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "never").exists()
    return " ".join(proc.stderr.split())


def test_wrong_type_names_key_value_and_what_is_allowed(tmp_path):
    err = _config_error(tmp_path, {"finetune": {"epochs": "many"}})
    assert "finetune.epochs" in err and "'many'" in err and "integer" in err


def test_unknown_section_key_is_an_error(tmp_path):
    err = _config_error(tmp_path, {"finetune": {"epochz": 3}})
    assert "finetune.epochz" in err and "epochs" in err  # lists what is allowed


def test_unknown_top_level_key_is_an_error(tmp_path):
    err = _config_error(tmp_path, {"colour": "red"})
    assert "'colour'" in err


def test_bad_choice_and_unreadable_yaml(tmp_path):
    err = _config_error(tmp_path, {"finetune": {"optimizer": "lion"}})
    assert "finetune.optimizer" in err and "adamw" in err
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("finetune: [unclosed\n")
    proc = run_cli("--config", cfg, "finetune", check=False)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_configs_are_valid(example):
    # Every key and value of the shipped examples passes the config check.
    proc = run_cli("--config", ROOT / "examples" / example, "build", "--help", check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_section_takes_an_options_flag_name_too():
    """`build: {target: cpu}` is build's --target (stored as `targets`); top-level
    keys stay option names, so a training `data:` never becomes bench's --data."""
    from edgetune import api

    values, _ = api.resolve("build", config={"build": {"target": "cpu", "from": "runs/float"}})
    assert values["targets"] == ("cpu",) and str(values["start"]) == "runs/float"
    values, _ = api.resolve("bench", ["B"], config={"data": "images/", "bench": {"json": "r.json"}})
    assert values["eval_data"] is None and str(values["json_file"]) == "r.json"
