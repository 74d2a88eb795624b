"""Small helpers every part of lrkd shares; imports nothing of lrkd.

- :func:`plain`: a config node (DictConfig / ListConfig, or nested mappings and sequences of them)
  as plain Python containers, resolved (hyper-parameters must be plain to load with
  ``weights_only=True``; fingerprints hash plain JSON).
- :func:`atomic_path`, :func:`write_text_atomic`, :func:`write_json_atomic`: write a file so that
  readers see the old file or the whole new one, never a part (a temp file in the same folder,
  then ``os.replace``).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yields a fresh temp file name beside ``path`` (so the rename stays on one filesystem) with
    ordinary permissions; on a clean exit the temp file replaces ``path``, on an error it is removed.

        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(...)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; outputs are ordinary files
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, fsync: bool = False, **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` plus a newline, written atomically (default ``indent=2``)."""
    dumps.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(obj, **dumps) + "\n", fsync=fsync)


__all__ = ["plain", "atomic_path", "write_text_atomic", "write_json_atomic"]
