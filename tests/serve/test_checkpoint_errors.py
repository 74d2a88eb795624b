"""A corrupt or foreign checkpoint given to predict or export ends in a clear error that names the
file and what was expected, and never suggests the unsafe ``weights_only=False`` load."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from lrkd.schema import DataError
from lrkd.serve.scorers import load_scorer, load_served
from lrkd.student.checkpoint import CheckpointError

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "student.ckpt"


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["random bytes"] = tmp_path / "random.ckpt"
    files["random bytes"].write_bytes(bytes(range(256)) * 8)
    files["truncated"] = tmp_path / "truncated.ckpt"
    files["truncated"].write_bytes(LEGACY.read_bytes()[:20000])
    files["foreign pickle"] = tmp_path / "pickle.ckpt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, files["foreign pickle"])
    files["foreign model"] = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, files["foreign model"])
    files["bare tensors"] = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, files["bare tensors"])
    files["empty"] = tmp_path / "empty.ckpt"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "pairs.csv"  # e.g. the input file given as --checkpoint by mistake
    files["text"].write_text("query,item_title\nusb cable,Anker USB-C cable\n")
    return files


def _check(message: str, path: Path) -> None:
    assert str(path) in message, message
    assert "expected" in message.lower() or "not found" in message, message
    assert "weights_only" not in message, message


def test_every_bad_checkpoint_gets_a_clear_error(tmp_path):
    for kind, path in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_served(path)
        _check(str(err.value), path)
        assert isinstance(err.value, DataError), kind


def test_weights_that_do_not_fit_the_recorded_student(tmp_path):
    raw = torch.load(LEGACY, weights_only=True, map_location="cpu")
    raw["state_dict"].pop("classifier.1.weight")
    path = tmp_path / "partial.ckpt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="do not fit") as err:
        load_served(path)
    _check(str(err.value), path)


def test_a_missing_file_and_a_foreign_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_scorer(checkpoint=tmp_path / "nope.ckpt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="a directory"):
        load_served(tmp_path / "dir")


def test_predict_and_export_commands_report_it_and_exit_2(tmp_path, capsys):
    from lrkd.cli import main

    bad = _bad_files(tmp_path)["foreign pickle"]
    src = tmp_path / "pairs.csv"
    src.write_text("query,item_title\nusb cable,Anker cable\n")
    assert main(["predict", "--checkpoint", str(bad), "--input", str(src), "--output", str(tmp_path / "o.csv")]) == 2
    _check(capsys.readouterr().err, bad)
    assert main(["export", "--checkpoint", str(bad), "--output", str(tmp_path / "s.onnx")]) == 2
    _check(capsys.readouterr().err, bad)
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "s.onnx").exists()


def test_the_legacy_checkpoint_copy_still_loads(tmp_path):
    path = tmp_path / "copy.ckpt"
    shutil.copy(LEGACY, path)
    student, config = load_served(path)
    assert config.label_set.num_classes == 4 and not student.training
