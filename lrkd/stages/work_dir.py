"""Where the teacher stages write, and how a stage knows its output is up to date.

Each stage writes one folder under ``stage.work_dir`` (``generations/``, ``sft/``, ``dpo/``,
``annotations/``) and, when it has finished, ``stage.json`` in it::

    {"stage": str, "fingerprint": sha256 hex, "wall_time_s": float, "finished_at": iso str, "metrics": {...}}

The fingerprint hashes the stage's resolved config and its inputs' fingerprints; a stage whose
folder holds a record with the same fingerprint is reused instead of run again.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)
_UMASK = os.umask(0o022)
os.umask(_UMASK)

STAGE_RECORD = "stage.json"


def stage_dir(cfg, name: str) -> Path:
    """``<cfg.stage.work_dir>/<name>``: the folder of one stage's outputs."""
    return Path(str(cfg.stage.work_dir)).expanduser() / name


def _plain(node) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def stage_fingerprint(config_node, input_fingerprints: Sequence[str]) -> str:
    """sha256 hex of a config (DictConfig or plain, resolved; key order does not matter) and the
    fingerprints of the stage's inputs (order matters)."""
    payload = {"config": _plain(config_node), "inputs": [str(f) for f in input_fingerprints]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def read_stage_record(directory) -> dict | None:
    """The ``stage.json`` of a stage folder, or None when absent or unreadable."""
    path = Path(directory) / STAGE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable stage record %s: %s", path, e)
        return None
    return record if isinstance(record, dict) else None


def write_stage_record(directory, stage: str, fingerprint: str, wall_time_s: float, metrics: Mapping) -> dict:
    """Write ``stage.json`` atomically (temp file, then rename); returns the record."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"stage": str(stage), "fingerprint": str(fingerprint), "wall_time_s": round(float(wall_time_s), 3),
              "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "metrics": _plain(dict(metrics))}
    fd, tmp = tempfile.mkstemp(prefix=f".{STAGE_RECORD}.", suffix=".tmp", dir=directory)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the record is an ordinary file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, directory / STAGE_RECORD)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return record


def clear_stage_record(directory) -> None:
    """Remove ``stage.json`` (before a stage (re)runs, so a killed run never looks finished)."""
    (Path(directory) / STAGE_RECORD).unlink(missing_ok=True)


def is_up_to_date(directory, fingerprint: str) -> bool:
    """Whether the folder holds a finished stage with this fingerprint."""
    record = read_stage_record(directory)
    return record is not None and record.get("fingerprint") == fingerprint
