"""Small helpers every part of lrkd shares; imports nothing of lrkd.

- :func:`plain`: a config node (DictConfig / ListConfig, or nested mappings and sequences of them)
  as plain Python containers, resolved (hyper-parameters must be plain to load with
  ``weights_only=True``; fingerprints hash plain JSON).
- :func:`atomic_path` (:class:`AtomicPath`), :func:`write_text_atomic`, :func:`write_json_atomic`:
  the one way lrkd writes a file (or a folder) that others read: readers see the old one or the
  whole new one, never a part (a temp file or folder beside it, then ``os.replace``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def plain(node: Any) -> Any:
    """``node`` with every OmegaConf container turned into dicts and lists (resolved); mappings
    and lists/tuples are converted recursively (tuples become lists); other values as they are."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    return node


class AtomicPath:
    """A fresh temp file (or, with ``directory``, an empty temp folder) beside ``path`` (so the rename
    stays on one filesystem), with ordinary permissions, that replaces ``path`` when committed.

        with atomic_path(out / "metrics.json") as tmp:   # committed on a clean exit,
            tmp.write_text(...)                            # removed on an error

    A file written over several calls (``lrkd predict``'s output) opens one with :meth:`open` and
    ends with :meth:`commit` or :meth:`discard`. ``fsync``: flush the file to disk before the rename.
    A committed folder replaces the folder at ``path`` (removed first: the only non-atomic step)."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False, directory: bool = False):
        self.path, self.fsync, self.directory = Path(path), bool(fsync), bool(directory)
        self.tmp: Path | None = None

    def open(self) -> Path:
        """Create the temp file (folder) and return its path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix, parent = f".{self.path.name}.", self.path.parent
        if self.directory:
            self.tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
            os.chmod(self.tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; outputs are ordinary folders
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
            os.close(fd)
            self.tmp = Path(name)
            os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; outputs are ordinary files
        return self.tmp

    def commit(self) -> Path:
        """Put the temp file (folder) in place of ``path``; returns ``path``."""
        if self.fsync and not self.directory:
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
        if self.directory and self.path.is_dir():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the temp file (folder), if it is still there."""
        if self.tmp is None or not self.tmp.exists():
            return
        if self.directory:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()


def atomic_path(path: str | os.PathLike, *, fsync: bool = False, directory: bool = False) -> AtomicPath:
    """An :class:`AtomicPath` for ``path`` (a context manager that yields the temp path)."""
    return AtomicPath(path, fsync=fsync, directory=directory)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, fsync: bool = False, **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` plus a newline, written atomically (default ``indent=2``)."""
    dumps.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(obj, **dumps) + "\n", fsync=fsync)


__all__ = ["plain", "AtomicPath", "atomic_path", "write_text_atomic", "write_json_atomic"]
