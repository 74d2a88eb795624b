"""lrkd.utils: the one atomic write (files and folders, in one go or over several calls)."""
from __future__ import annotations

import os
import stat

import pytest

from lrkd.utils import atomic_path, write_json_atomic, write_text_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    assert write_json_atomic(path, {"a": 1}) == path
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # an ordinary file, not mkstemp's 0600
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == '{\n  "a": 1\n}\n' and _leftovers(path.parent) == []
    write_text_atomic(path, "new", fsync=True)
    assert path.read_text() == "new"


def test_a_file_written_over_several_calls_commits_or_discards(tmp_path):
    kept, dropped = atomic_path(tmp_path / "out.csv"), atomic_path(tmp_path / "other.csv")
    with open(kept.open(), "w") as f:
        f.write("a,b\n")
    dropped.open().write_text("x")
    assert not (tmp_path / "out.csv").exists()  # nothing before the commit
    kept.commit()
    dropped.discard()
    assert (tmp_path / "out.csv").read_text() == "a,b\n" and not (tmp_path / "other.csv").exists()
    assert _leftovers(tmp_path) == []


def test_a_folder_replaces_the_previous_one_whole(tmp_path):
    out = tmp_path / "artefact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out, directory=True) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(os.listdir(out)) == ["old.txt"] and _leftovers(tmp_path) == []
    with atomic_path(out, directory=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(out)) == ["new.txt"] and _leftovers(tmp_path) == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
