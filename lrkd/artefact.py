"""The teacher annotation artefact: the contract between the teacher stage and the student.

On disk (schema version 1) an artefact is a directory::

    manifest.json                 ArtefactManifest as JSON; lists only finished shards
    shard-00000.parquet           query_id, item_id (str), rationale_<perspective> (str) per
                                  perspective, soft_label (list<float32>, C values summing to 1)
    shard-00000.safetensors       {"latents": [n, K, D] float16}, row-aligned with the parquet shard

The teacher writes it with :class:`ArtefactWriter`, shard by shard, each shard atomically (temp
files, then ``os.replace``; the manifest is rewritten last), so a killed writer resumes with the
shards it finished. One writer per directory at a time. The student reads it with
:func:`load_artefact`, checks it against its dataset and config with :meth:`Annotations.validate`
and maps it onto the dataset rows with :meth:`Annotations.align` (pairs without an annotation
are allowed: they are masked out of the distillation terms downstream).

C = number of grades (``label_names``), K = number of perspectives, D = ``vector_dim``.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

from lrkd.data.schema import DataError, dataset_fingerprint as compute_fingerprint

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
    dataset_fingerprint: ``lrkd.data.schema.dataset_fingerprint`` of the annotated dataset.
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


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _temp_path(root: Path, stem: str, suffix: str) -> Path:
    """A fresh temp file name next to its final name (same filesystem, so os.replace is atomic)."""
    fd, name = tempfile.mkstemp(dir=root, prefix=f".{stem}.", suffix=suffix + _TEMP_SUFFIX)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes it private; the artefact's files are ordinary files
    return Path(name)


def _write_manifest(root: Path, manifest: ArtefactManifest) -> None:
    tmp = _temp_path(root, "manifest", ".json")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, root / MANIFEST_NAME)


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


def _json_record(extra: Mapping | None) -> dict:
    """``extra`` as plain JSON data (OmegaConf configs are converted); TypeError names the problem."""
    if extra is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(extra, DictConfig):
            extra = OmegaConf.to_container(extra, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(extra, Mapping):
        raise ArtefactError(f"extra must be a mapping, got {type(extra).__name__}", column="extra")
    try:
        return json.loads(json.dumps(dict(extra)))
    except (TypeError, ValueError) as e:
        raise ArtefactError(f"extra must be JSON-serialisable: {e}", column="extra") from None


# ----------------------------------------------------------------------------------------------
# Writing


class ArtefactWriter:
    """Writes an artefact shard by shard; opening an existing artefact resumes it.

    A resumed writer checks that teacher_id, perspectives, label_names, vector_dim and
    dataset_fingerprint equal the manifest's (ArtefactError otherwise), keeps the finished shards
    and removes stray temp files of a killed writer. ``extra`` of a resumed artefact keeps the
    value it was created with (a differing one gives a warning).
    """

    def __init__(self, root: str | os.PathLike, *, teacher_id: str, perspectives: Sequence[str],
                 label_names: Sequence[str], vector_dim: int, dataset_fingerprint: str,
                 extra: Mapping | None = None):
        self.root = Path(root)
        perspectives, label_names = tuple(map(str, perspectives)), tuple(map(str, label_names))
        if not perspectives or len(set(perspectives)) != len(perspectives) or "" in perspectives:
            raise ArtefactError(f"perspectives must be distinct non-empty names, got {perspectives}")
        if len(label_names) < 2 or len(set(label_names)) != len(label_names):
            raise ArtefactError(f"label_names must be >= 2 distinct grades, got {label_names}")
        if int(vector_dim) < 1:
            raise ArtefactError(f"vector_dim must be >= 1, got {vector_dim}")
        wanted = ArtefactManifest(
            teacher_id=str(teacher_id), perspectives=perspectives, label_names=label_names,
            vector_dim=int(vector_dim), dataset_fingerprint=str(dataset_fingerprint),
            extra=_json_record(extra), created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._keys: set[tuple[str, str]] = set()
        if (self.root / MANIFEST_NAME).is_file():
            self.manifest = self._resume(wanted)
        else:
            self._start(wanted)
            self.manifest = wanted
            _write_manifest(self.root, self.manifest)

    # -- opening

    def _start(self, wanted: ArtefactManifest) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ArtefactError("the artefact path exists and is not a directory", path=str(self.root))
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_temp_files()
        foreign = sorted(p.name for p in self.root.iterdir() if not _SHARD_NAME.match(p.name.split(".")[0]))
        if foreign:
            raise ArtefactError(f"refusing to create an artefact in a directory holding other files "
                                f"({foreign[:5]}); choose an empty or new directory", path=str(self.root))

    def _resume(self, wanted: ArtefactManifest) -> ArtefactManifest:
        have = read_manifest(self.root)
        fields = ("teacher_id", "perspectives", "label_names", "vector_dim", "dataset_fingerprint")
        diffs = [f"{k}: artefact has {getattr(have, k)!r}, writer was given {getattr(wanted, k)!r}"
                 for k in fields if getattr(have, k) != getattr(wanted, k)]
        if diffs:
            raise ArtefactError(
                "cannot resume this artefact with different settings:\n  " + "\n  ".join(diffs)
                + "\nWrite to a new directory, or resume with the original settings.",
                path=str(self.root / MANIFEST_NAME))
        if wanted.extra and wanted.extra != have.extra:
            warnings.warn(f"resuming artefact {self.root}: the given extra differs from the recorded "
                          f"one, which is kept", ArtefactWarning, stacklevel=3)
        self._remove_temp_files()
        for name in have.shards:
            table = _read_shard_table(self.root, name, columns=["query_id", "item_id"])
            self._keys.update(zip(table.column("query_id").to_pylist(), table.column("item_id").to_pylist()))
            if not (self.root / f"{name}.safetensors").is_file():
                raise ArtefactError(f"shard {name} is listed in the manifest but its .safetensors "
                                    f"file is missing; delete the artefact and re-annotate",
                                    path=str(self.root / f"{name}.safetensors"))
        return have

    def _remove_temp_files(self) -> None:
        for p in self.root.glob("." + "*" + _TEMP_SUFFIX):
            p.unlink(missing_ok=True)

    # -- state

    def completed_shards(self) -> set[int]:
        """Ids of the finished shards."""
        return {int(_SHARD_NAME.match(s).group(1)) for s in self.manifest.shards}

    def completed_keys(self) -> set[tuple[str, str]]:
        """(query_id, item_id) pairs already written."""
        return set(self._keys)

    # -- writing

    def write_shard(self, shard_id: int, query_ids: Sequence[str], item_ids: Sequence[str],
                    rationales: Mapping[str, Sequence[str]], soft_labels, latents) -> None:
        """Validate and write one shard of n rows, atomically.

        query_ids, item_ids: n ids each. rationales: perspective -> n texts (exactly the manifest's
        perspectives). soft_labels: [n, C] probabilities (non-negative, rows sum to 1 within 1e-3).
        latents: [n, K, D] (stored as float16). Refuses a finished shard id and pairs already written.
        """
        m = self.manifest
        if isinstance(shard_id, bool) or not isinstance(shard_id, (int, np.integer)) or shard_id < 0:
            raise ArtefactError(f"shard_id must be an int >= 0, got {shard_id!r}")
        name = shard_name(int(shard_id))
        where = str(self.root / f"{name}.parquet")
        if name in m.shards:
            raise ArtefactError(f"shard {shard_id} is already finished; refusing to overwrite it "
                                f"(skip the ids in completed_shards())", path=where)
        qids, iids = [str(q) for q in query_ids], [str(i) for i in item_ids]
        n = len(qids)
        if len(iids) != n:
            raise ArtefactError(f"{n} query_ids but {len(iids)} item_ids", path=where, column="item_id")
        texts = self._check_rationales(rationales, n, where)
        probs = self._check_soft_labels(soft_labels, n, where)
        vectors = self._check_latents(latents, n, where)
        keys = list(zip(qids, iids))
        seen: set[tuple[str, str]] = set()
        for row, key in enumerate(keys):
            if key in seen or key in self._keys:
                raise ArtefactError(f"pair (query_id={key[0]!r}, item_id={key[1]!r}) is "
                                    f"{'repeated in this shard' if key in seen else 'already written'}",
                                    path=where, row=row)
            seen.add(key)

        columns = {"query_id": pa.array(qids, pa.string()), "item_id": pa.array(iids, pa.string())}
        for p in m.perspectives:
            columns[rationale_column(p)] = pa.array(texts[p], pa.string())
        offsets = pa.array(np.arange(0, probs.size + 1, m.num_classes, dtype=np.int32))
        columns["soft_label"] = pa.ListArray.from_arrays(offsets, pa.array(probs.ravel(), pa.float32()))
        table = pa.table(columns)
        parquet_tmp = _temp_path(self.root, name, ".parquet")
        vectors_tmp = _temp_path(self.root, name, ".safetensors")
        try:
            pq.write_table(table, parquet_tmp, compression="zstd")
            save_file({LATENTS_KEY: vectors}, str(vectors_tmp),
                      metadata={"lrkd_schema_version": str(SCHEMA_VERSION), "num_rows": str(n)})
            _fsync(parquet_tmp)
            _fsync(vectors_tmp)
            os.replace(parquet_tmp, self.root / f"{name}.parquet")
            os.replace(vectors_tmp, self.root / f"{name}.safetensors")
        finally:
            parquet_tmp.unlink(missing_ok=True)
            vectors_tmp.unlink(missing_ok=True)
        m.shards = sorted([*m.shards, name])
        m.num_rows += n
        m.complete = False
        _write_manifest(self.root, m)
        self._keys.update(keys)

    def _check_rationales(self, rationales, n: int, where: str) -> dict[str, list[str]]:
        given, wanted = set(rationales), set(self.manifest.perspectives)
        if given != wanted:
            raise ArtefactError(f"rationales must have exactly the perspectives "
                                f"{list(self.manifest.perspectives)}; missing {sorted(wanted - given)}, "
                                f"unexpected {sorted(given - wanted)}", path=where)
        out = {}
        for p in self.manifest.perspectives:
            texts = list(rationales[p])
            if len(texts) != n:
                raise ArtefactError(f"{len(texts)} rationales for {n} rows", path=where,
                                    column=rationale_column(p))
            for row, t in enumerate(texts):
                if not isinstance(t, str):
                    raise ArtefactError(f"rationale must be a str, got {type(t).__name__}",
                                        path=where, row=row, column=rationale_column(p))
            out[p] = texts
        return out

    def _check_soft_labels(self, soft_labels, n: int, where: str) -> np.ndarray:
        probs = np.asarray(soft_labels, dtype=np.float64)
        c = self.manifest.num_classes
        if probs.shape != (n, c):
            raise ArtefactError(f"soft_labels must have shape [n={n}, C={c}], got {list(probs.shape)}",
                                path=where, column="soft_label")
        bad = ~np.isfinite(probs).all(1) | (probs < 0).any(1) | (np.abs(probs.sum(1) - 1) > PROBABILITY_TOLERANCE)
        if bad.any():
            row = int(np.argmax(bad))
            raise ArtefactError(f"soft label {probs[row].tolist()} is not a probability vector "
                                f"(non-negative, summing to 1 within {PROBABILITY_TOLERANCE})",
                                path=where, row=row, column="soft_label")
        return probs.astype(np.float32)

    def _check_latents(self, latents, n: int, where: str) -> np.ndarray:
        vectors = np.asarray(latents, dtype=np.float32)
        shape = (n, self.manifest.num_perspectives, self.manifest.vector_dim)
        if vectors.shape != shape:
            raise ArtefactError(f"latents must have shape [n, K, D] = {list(shape)}, got "
                                f"{list(vectors.shape)}", path=where, column=LATENTS_KEY)
        bad = ~(np.abs(vectors) <= _FP16_MAX).reshape(n, -1).all(1)  # NaN, inf, or fp16 overflow
        if bad.any():
            raise ArtefactError(f"latents must be finite and within float16 range (|x| <= {_FP16_MAX})",
                                path=where, row=int(np.argmax(bad)), column=LATENTS_KEY)
        return np.ascontiguousarray(vectors.astype(np.float16))

    def finalize(self) -> ArtefactManifest:
        """Mark the artefact complete; returns the final manifest."""
        self.manifest.complete = True
        _write_manifest(self.root, self.manifest)
        return self.manifest


# ----------------------------------------------------------------------------------------------
# Reading


def _read_shard_table(root: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    path = root / f"{name}.parquet"
    if not path.is_file():
        raise ArtefactError(f"shard {name} is listed in the manifest but its parquet file is missing; "
                            f"the artefact is damaged: re-annotate (a writer resumes from the manifest "
                            f"after you remove {name} from its 'shards')", path=str(path))
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise ArtefactError(f"cannot read shard {name}: {e}", path=str(path)) from None
    return table


def load_artefact(root: str | os.PathLike) -> "Annotations":
    """Read the manifest and every shard it lists (stray temp files are ignored)."""
    root = Path(root)
    m = read_manifest(root)
    c, k, d = m.num_classes, m.num_perspectives, m.vector_dim
    rat_cols = [rationale_column(p) for p in m.perspectives]
    qids, iids, probs, vecs = [], [], [], []
    texts: dict[str, list[str]] = {p: [] for p in m.perspectives}
    for name in m.shards:
        parquet = root / f"{name}.parquet"
        table = _read_shard_table(root, name)
        missing = [col for col in ["query_id", "item_id", *rat_cols, "soft_label"] if col not in table.column_names]
        if missing:
            raise ArtefactError(f"shard {name} lacks the columns {missing}", path=str(parquet))
        n = table.num_rows
        soft = table.column("soft_label").combine_chunks()
        lengths = pc.list_value_length(soft).to_numpy(zero_copy_only=False)
        if n and (lengths != c).any():
            row = int(np.argmax(lengths != c))
            raise ArtefactError(f"soft label has {lengths[row]} values, manifest has C={c} label_names",
                                path=str(parquet), row=row, column="soft_label")
        vec_path = root / f"{name}.safetensors"
        if not vec_path.is_file():
            raise ArtefactError(f"shard {name} is listed in the manifest but its vectors file is missing",
                                path=str(vec_path))
        try:
            tensors = load_file(str(vec_path))
        except Exception as e:  # safetensors raises its own error types
            raise ArtefactError(f"cannot read shard {name} vectors: {e}", path=str(vec_path)) from None
        if LATENTS_KEY not in tensors or tensors[LATENTS_KEY].ndim != 3:
            raise ArtefactError(f"expected a 3-d tensor {LATENTS_KEY!r} [n, K, D], found "
                                f"{ {key: list(t.shape) for key, t in tensors.items()} }", path=str(vec_path))
        lat = tensors[LATENTS_KEY]
        if lat.shape[0] != n:
            raise ArtefactError(f"shard {name}: the parquet file has {n} rows but the vectors file has "
                                f"{lat.shape[0]}; the shard is damaged, re-annotate it", path=str(vec_path))
        qids.append(table.column("query_id").to_numpy(zero_copy_only=False).astype(object))
        iids.append(table.column("item_id").to_numpy(zero_copy_only=False).astype(object))
        for p, col in zip(m.perspectives, rat_cols):
            texts[p].extend(table.column(col).to_pylist())
        probs.append(pc.list_flatten(soft).to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, c))
        vecs.append(lat.astype(np.float32))
    if vecs:
        latents = np.concatenate(vecs)
    else:
        latents = np.zeros((0, k, d), np.float32)
    return Annotations(
        manifest=m,
        query_ids=np.concatenate(qids) if qids else np.array([], dtype=object),
        item_ids=np.concatenate(iids) if iids else np.array([], dtype=object),
        rationales=texts,
        soft_labels=np.concatenate(probs) if probs else np.zeros((0, c), np.float32),
        latents=latents, root=root)


@dataclass
class AlignedAnnotations:
    """Annotations laid out in a dataset's row order (N = len(df)).

    annotated:   [N] bool, whether the pair has an annotation.
    soft_labels: [N, C] float32 teacher probabilities; uniform 1/C where not annotated.
    latents:     [N, K, D] float32 latent targets; zeros where not annotated.
    rationales:  N dicts perspective -> text; {} where not annotated.
    """

    annotated: np.ndarray
    soft_labels: np.ndarray
    latents: np.ndarray
    rationales: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.annotated)


@dataclass
class Annotations:
    """A loaded artefact: n annotated pairs in artefact order.

    query_ids, item_ids: [n] str (object arrays). rationales: perspective -> n texts.
    soft_labels: [n, C] float32. latents: [n, K, D] float32 (stored as float16).
    """

    manifest: ArtefactManifest
    query_ids: np.ndarray
    item_ids: np.ndarray
    rationales: dict[str, list[str]]
    soft_labels: np.ndarray
    latents: np.ndarray
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def perspectives(self) -> tuple[str, ...]:
        return self.manifest.perspectives

    def _where(self) -> str | None:
        return str(self.root) if self.root is not None else None

    def _pair_index(self) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays([self.query_ids.astype(str), self.item_ids.astype(str)],
                                         names=["query_id", "item_id"])

    def validate(self, df: pd.DataFrame, *, perspectives: Sequence[str] | None = None,
                 label_names: Sequence[str], dataset_fingerprint: str | None = None,
                 strict_fingerprint: bool = True) -> None:
        """Check the artefact fits ``df`` and the student's config; ArtefactError listing every
        problem found. ``dataset_fingerprint`` defaults to the fingerprint of ``df``. A fingerprint
        mismatch is only a warning when ``strict_fingerprint=False``; an incomplete artefact is
        always only a warning (unannotated pairs are masked out downstream)."""
        m, where = self.manifest, self._where()
        problems: list[str] = []
        fingerprint = compute_fingerprint(df) if dataset_fingerprint is None else str(dataset_fingerprint)
        if m.dataset_fingerprint != fingerprint:
            msg = (f"the artefact was annotated on dataset fingerprint {m.dataset_fingerprint[:12]}..., "
                   f"but the configured dataset has {fingerprint[:12]}... (the data changed since "
                   f"annotation).")
            if strict_fingerprint:
                problems.append(msg + " Re-run the teacher annotation on this dataset, or allow a "
                                      "non-strict fingerprint to match pairs by (query_id, item_id) anyway.")
            else:
                warnings.warn(f"artefact {where}: {msg} Pairs are matched by (query_id, item_id).",
                              ArtefactWarning, stacklevel=2)
        if perspectives is not None and tuple(map(str, perspectives)) != m.perspectives:
            problems.append(f"perspectives differ: artefact has {list(m.perspectives)}, the config has "
                            f"{list(map(str, perspectives))}. Configure the artefact's perspectives "
                            f"(same order), or re-annotate.")
        if tuple(map(str, label_names)) != m.label_names:
            problems.append(f"label names differ: artefact has {list(m.label_names)}, the dataset has "
                            f"{list(map(str, label_names))}. Use the label set the teacher annotated "
                            f"with (same order), or re-annotate.")
        k, d = m.num_perspectives, m.vector_dim
        if self.latents.ndim != 3 or self.latents.shape[1:] != (k, d):
            problems.append(f"vector_dim/perspectives disagree with the latents: manifest says "
                            f"[n, K={k}, D={d}], latents are {list(self.latents.shape)}. The artefact "
                            f"is inconsistent: re-annotate.")
        if self.soft_labels.ndim != 2 or self.soft_labels.shape[1] != m.num_classes:
            problems.append(f"soft labels have shape {list(self.soft_labels.shape)}, manifest has "
                            f"C={m.num_classes} label names. The artefact is inconsistent: re-annotate.")
        keys = self._pair_index()
        dup = keys[keys.duplicated()].unique()
        if len(dup):
            problems.append(f"{len(dup)} pairs appear more than once in the artefact, e.g. "
                            f"{[tuple(x) for x in dup[:3]]}. The artefact is damaged: re-annotate.")
        dataset_keys = pd.MultiIndex.from_arrays([df["query_id"].astype(str), df["item_id"].astype(str)])
        unknown = keys[~keys.isin(dataset_keys)]
        if len(unknown):
            problems.append(f"{len(unknown)} annotated pairs are not in the dataset, e.g. "
                            f"{[tuple(x) for x in unknown[:3]]} (query_id, item_id). The artefact "
                            f"belongs to another dataset: point to the right one, or re-annotate.")
        if problems:
            raise ArtefactError("the annotation artefact does not fit this run:\n  - "
                                + "\n  - ".join(problems), path=where)
        if not m.complete:
            warnings.warn(f"artefact {where} is incomplete ({len(self)} pairs in {len(m.shards)} "
                          f"shards; the writer did not finalize). Unannotated pairs are masked out.",
                          ArtefactWarning, stacklevel=2)

    def align(self, df: pd.DataFrame) -> AlignedAnnotations:
        """Lay the annotations out in ``df``'s row order (see :class:`AlignedAnnotations`)."""
        keys = self._pair_index()
        if keys.has_duplicates:
            raise ArtefactError("the artefact has duplicate pairs, so it cannot be aligned; run "
                                "validate() for details", path=self._where())
        rows = keys.get_indexer(pd.MultiIndex.from_arrays(
            [df["query_id"].astype(str), df["item_id"].astype(str)]))
        annotated = rows >= 0
        n, c = len(df), self.manifest.num_classes
        soft = np.full((n, c), 1.0 / c, dtype=np.float32)
        soft[annotated] = self.soft_labels[rows[annotated]]
        latents = np.zeros((n, *self.latents.shape[1:]), dtype=np.float32)
        latents[annotated] = self.latents[rows[annotated]]
        perspectives = self.manifest.perspectives
        rationales = [{p: self.rationales[p][r] for p in perspectives} if r >= 0 else {} for r in rows]
        return AlignedAnnotations(annotated=annotated, soft_labels=soft, latents=latents,
                                  rationales=rationales)


def perspective_title(perspective: str) -> str:
    """``"user_intent"`` -> ``"User intent"``."""
    words = perspective.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def format_rationales(rationales: Mapping[str, str], perspectives: Sequence[str]) -> str:
    """One text from a pair's rationales, in perspective order, skipping empty ones:
    ``"User intent: <text>\\nStructured analysis: <text>\\nBusiness rules: <text>"``."""
    lines = []
    for p in perspectives:
        text = (rationales.get(p) or "").strip()
        if text:
            lines.append(f"{perspective_title(p)}: {text}")
    return "\n".join(lines)
