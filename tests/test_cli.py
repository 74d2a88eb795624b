"""The ``lrkd`` command line: one console script whose help lists every command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lrkd.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "predict", "export", "report", "zero-to-fp32"):
        assert name in out and name in COMMANDS


def test_unknown_command_is_an_error(capsys):
    try:
        main(["serve-forever"])
    except SystemExit as e:
        assert e.code == 2
    assert "unknown command" in capsys.readouterr().err


def test_each_command_has_its_own_help(capsys):
    for name in ("predict", "export", "report", "zero-to-fp32"):
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert f"lrkd {name}" in capsys.readouterr().out


def test_train_composes_the_config_like_train_py(tmp_path):
    """``python -m lrkd train --cfg job`` prints the composed config without running a stage."""
    out = subprocess.run([sys.executable, "-m", "lrkd", "train", "--cfg", "job", "student=tiny", "loss=ce"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "model_type: bert" in out.stdout and "CETerm" in out.stdout


def test_a_sweep_config_run_without_multirun_warns():
    """experiment=seeds (or an hparams_search) without -m runs one job: say so instead of silently."""
    import pytest

    from lrkd.train import SweepNotRunWarning, warn_unswept

    with pytest.warns(SweepNotRunWarning, match=r"add -m"):
        assert "seed" in warn_unswept({"seed": "1,2,3"})
    assert warn_unswept({}) is None
