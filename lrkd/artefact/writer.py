"""Writing an artefact shard by shard (:class:`ArtefactWriter`), each shard atomically (temp
files, then ``os.replace``; the manifest is rewritten last), so a killed writer resumes with the
shards it finished. One writer per directory at a time."""
from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from lrkd.artefact.manifest import (_FP16_MAX, _SHARD_NAME, _TEMP_SUFFIX, LATENTS_KEY, MANIFEST_NAME, SCORE_PREFIX,
                                    PROBABILITY_TOLERANCE, SCHEMA_VERSION, ArtefactError, ArtefactManifest,
                                    ArtefactWarning, json_record, rationale_column, read_manifest, shard_name,
                                    write_manifest)
from lrkd.artefact.reader import read_shard_keys
from lrkd.utils import atomic_path


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
            extra=json_record(extra), created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._keys: set[tuple[str, str]] = set()
        if (self.root / MANIFEST_NAME).is_file():
            self.manifest = self._resume(wanted)
        else:
            self._start(wanted)
            self.manifest = wanted
            write_manifest(self.root, self.manifest)

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
            self._keys.update(read_shard_keys(self.root, name))
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
                    rationales: Mapping[str, Sequence[str]], soft_labels, latents,
                    scores: Mapping[str, Sequence[float]] | None = None) -> None:
        """Validate and write one shard of n rows, atomically.

        query_ids, item_ids: n ids each. rationales: perspective -> n texts (exactly the manifest's
        perspectives). soft_labels: [n, C] probabilities (non-negative, rows sum to 1 within 1e-3).
        latents: [n, K, D] (stored as float16). scores: optional name -> n finite floats (columns
        ``score/<name>``). Refuses a finished shard id and pairs already written.
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
        for key, values in (scores or {}).items():
            values = np.asarray(values, dtype=np.float32)
            if values.shape != (n,) or not np.isfinite(values).all():
                raise ArtefactError(f"score {key!r} needs {n} finite values, got shape {values.shape}",
                                    path=where, column=f"{SCORE_PREFIX}{key}")
            columns[f"{SCORE_PREFIX}{key}"] = pa.array(values, pa.float32())
        table = pa.table(columns)
        # each file atomically; the shard counts once the manifest lists it (a killed writer's temp
        # files are removed on resume)
        with atomic_path(self.root / f"{name}.parquet", fsync=True) as parquet_tmp, \
                atomic_path(self.root / f"{name}.safetensors", fsync=True) as vectors_tmp:
            pq.write_table(table, parquet_tmp, compression="zstd")
            save_file({LATENTS_KEY: vectors}, str(vectors_tmp),
                      metadata={"lrkd_schema_version": str(SCHEMA_VERSION), "num_rows": str(n)})
        m.shards = sorted([*m.shards, name])
        m.num_rows += n
        m.complete = False
        write_manifest(self.root, m)
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
        write_manifest(self.root, self.manifest)
        return self.manifest


