from __future__ import annotations

import subprocess
import sys

import pytest

from ssl_aver.app.cli import COMMANDS, main
from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError

DEFAULTS = {"seed": 0, "train": {"epochs": 2, "lr": 1e-4}, "tasks": ["energy"]}


def test_config_overrides_and_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 5\n")
    cfg = load_config(recipe, ["train.lr=0.5", "seed=3"], DEFAULTS)
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.5 and cfg.seed == 3
    with pytest.raises(UserError, match="train.epoch"):
        load_config(recipe, ["train.epoch=3"], DEFAULTS)
    recipe.write_text("trian:\n  epochs: 5\n")
    with pytest.raises(UserError, match="trian"):
        load_config(recipe, [], DEFAULTS)
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["seed"], DEFAULTS)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml", [], DEFAULTS)
    saved = save_config(load_config(None, ["seed=9"], DEFAULTS), tmp_path / "run")
    assert "seed: 9" in saved.read_text()


def test_cli_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_cli_unknown_command_and_option_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["scan", "--bogus"])
    assert exc.value.code == 2


def test_console_script_user_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_aver.app.cli", "scan", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    proc = subprocess.run([sys.executable, "-m", "ssl_aver.app.cli", name, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ssl-aver" in proc.stdout
