"""The artefact's manifest (``manifest.json``): what an artefact holds and which shards are
finished; the names of its files; its error type. See :mod:`lrkd.artefact` for the layout."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from lrkd.schema import DataError
from lrkd.utils import atomic_path, plain

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LATENTS_KEY = "latents"
RATIONALE_PREFIX = "rationale_"
PROBABILITY_TOLERANCE = 1e-3
_FP16_MAX = float(np.finfo(np.float16).max)
_TEMP_SUFFIX = ".tmp"
_SHARD_NAME = re.compile(r"^shard-(\d{5,})$")


class ArtefactError(DataError):
    """A missing, corrupt or mismatching annotation artefact (a ``ValueError``); the message says
    what is wrong, where, and how to fix it."""


class ArtefactWarning(UserWarning):
    """An artefact that is usable but not what was asked for (partial, or another dataset)."""


def shard_name(shard_id: int) -> str:
    """``shard-00042`` for shard id 42 (the stem of both shard files)."""
    return f"shard-{shard_id:05d}"


SCORE_PREFIX = "score/"  # a shard's optional per-pair readings: columns score/<name>


def rationale_column(perspective: str) -> str:
    """Parquet column holding one perspective's rationales."""
    return RATIONALE_PREFIX + perspective


# ----------------------------------------------------------------------------------------------
# Manifest


@dataclass
class ArtefactManifest:
    """The contents of ``manifest.json``.

    teacher_id:   what produced the annotations (model id / checkpoint path).
    perspectives: perspective names, in the order of the K axis of the latents.
    label_names:  grade names, in the order of the C axis of the soft labels.
    vector_dim:   D, the dimension of each latent target.
    dataset_fingerprint: ``lrkd.schema.dataset_fingerprint`` of the annotated dataset.
    num_rows:     rows over all finished shards.
    shards:       names of the finished shards (``shard-00000``, ...), by shard id.
    complete:     True once the writer finalized (every intended pair is annotated).
    created_at:   ISO-8601 UTC time the artefact was started.
    extra:        JSON-serialisable free-form record (teacher config, generation settings).
    """

    teacher_id: str
    perspectives: tuple[str, ...]
    label_names: tuple[str, ...]
    vector_dim: int
    dataset_fingerprint: str
    num_rows: int = 0
    shards: list[str] = field(default_factory=list)
    complete: bool = False
    created_at: str = ""
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        self.perspectives = tuple(str(p) for p in self.perspectives)
        self.label_names = tuple(str(n) for n in self.label_names)
        self.shards = [str(s) for s in self.shards]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def num_perspectives(self) -> int:
        return len(self.perspectives)

    def to_json(self) -> str:
        """The manifest as indented JSON (keys in the documented order)."""
        d = asdict(self)
        order = ["schema_version", "teacher_id", "perspectives", "label_names", "vector_dim",
                 "dataset_fingerprint", "num_rows", "shards", "complete", "created_at", "extra"]
        d = {k: d[k] for k in order}
        d["perspectives"], d["label_names"] = list(self.perspectives), list(self.label_names)
        return json.dumps(d, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path: str | os.PathLike | None = None) -> "ArtefactManifest":
        """Parse a manifest; refuses a schema version this lrkd does not read."""
        where = str(path) if path is not None else None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtefactError(f"manifest is not valid JSON ({e})", path=where) from None
        if not isinstance(d, dict):
            raise ArtefactError("manifest must be a JSON object", path=where)
        version = d.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ArtefactError(f"manifest has no valid schema_version (got {version!r})",
                                path=where, column="schema_version")
        if version != SCHEMA_VERSION:
            raise ArtefactError(
                f"artefact schema_version {version} is not supported: this lrkd reads schema "
                f"version {SCHEMA_VERSION}. Use the lrkd release that wrote it, or re-run the "
                f"teacher annotation with this one.", path=where, column="schema_version")
        required = ("teacher_id", "perspectives", "label_names", "vector_dim", "dataset_fingerprint")
        missing = [k for k in required if k not in d]
        if missing:
            raise ArtefactError(f"manifest lacks the keys {missing}", path=where)
        for key in ("perspectives", "label_names", "shards"):
            if not isinstance(d.get(key, []), list):
                raise ArtefactError(f"{key} must be a JSON list, got {d[key]!r}", path=where, column=key)
        try:
            return cls(
                schema_version=version, teacher_id=str(d["teacher_id"]),
                perspectives=tuple(d["perspectives"]), label_names=tuple(d["label_names"]),
                vector_dim=int(d["vector_dim"]), dataset_fingerprint=str(d["dataset_fingerprint"]),
                num_rows=int(d.get("num_rows", 0)), shards=list(d.get("shards", [])),
                complete=bool(d.get("complete", False)), created_at=str(d.get("created_at", "")),
                extra=dict(d.get("extra") or {}))
        except (TypeError, ValueError) as e:
            raise ArtefactError(f"manifest has a malformed field ({e})", path=where) from None


def write_manifest(root: Path, manifest: ArtefactManifest) -> None:
    """Write ``<root>/manifest.json`` atomically (synced before the rename)."""
    with atomic_path(root / MANIFEST_NAME, fsync=True) as tmp:
        tmp.write_text(manifest.to_json(), encoding="utf-8")


def read_manifest(root: str | os.PathLike) -> ArtefactManifest:
    """Read ``<root>/manifest.json``; ArtefactError if the directory or manifest is missing."""
    root = Path(root)
    if not root.is_dir():
        raise ArtefactError("no artefact directory here; run the teacher annotation stage first, "
                            "or point the artefact path at an existing artefact", path=str(root))
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtefactError(f"the directory has no {MANIFEST_NAME}, so it is not an lrkd annotation "
                            f"artefact (or its writer never finished a shard)", path=str(root))
    return ArtefactManifest.from_json(path.read_text(encoding="utf-8"), path=path)


def json_record(extra: Mapping | None) -> dict:
    """``extra`` as plain JSON data (OmegaConf configs are converted); TypeError names the problem."""
    if extra is None:
        return {}
    extra = plain(extra)
    if not isinstance(extra, Mapping):
        raise ArtefactError(f"extra must be a mapping, got {type(extra).__name__}", column="extra")
    try:
        return json.loads(json.dumps(dict(extra)))
    except (TypeError, ValueError) as e:
        raise ArtefactError(f"extra must be JSON-serialisable: {e}", column="extra") from None


