"""Reading an artefact: the one shard reader (:func:`read_shard`, :func:`iter_shards`), the whole
artefact (:func:`load_artefact` -> :class:`Annotations`), checked against a dataset
(:meth:`Annotations.validate`) and laid out in its row order (:meth:`Annotations.align`)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors.numpy import load_file

from lrkd.artefact.manifest import (LATENTS_KEY, SCORE_PREFIX, ArtefactError, ArtefactManifest, ArtefactWarning, rationale_column,
                                    read_manifest)
from lrkd.schema import dataset_fingerprint as compute_fingerprint


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


def read_shard_keys(root: Path, name: str) -> set[tuple[str, str]]:
    """The (query_id, item_id) pairs of one shard (reads only those two columns)."""
    table = _read_shard_table(root, name, columns=["query_id", "item_id"])
    return set(zip(table.column("query_id").to_pylist(), table.column("item_id").to_pylist()))


@dataclass
class Shard:
    """One finished shard, checked: n rows of query_ids, item_ids [n] (object arrays), rationales
    (perspective -> n texts), soft_labels [n, C] float32, latents [n, K, D] float32, scores (name
    -> [n] float32: named per-pair readings, e.g. a judgement panel's answer probabilities)."""

    name: str
    query_ids: np.ndarray
    item_ids: np.ndarray
    rationales: dict[str, list[str]]
    soft_labels: np.ndarray
    latents: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_ids)


def read_shard(root: Path, m: ArtefactManifest, name: str) -> Shard:
    """Read and check one shard of the artefact at ``root`` (ArtefactError naming the file, row
    and column when a file is missing, damaged or disagrees with the manifest)."""
    c = m.num_classes
    rat_cols = [rationale_column(p) for p in m.perspectives]
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
    return Shard(name=name,
                 query_ids=table.column("query_id").to_numpy(zero_copy_only=False).astype(object),
                 item_ids=table.column("item_id").to_numpy(zero_copy_only=False).astype(object),
                 rationales={p: table.column(col).to_pylist() for p, col in zip(m.perspectives, rat_cols)},
                 soft_labels=pc.list_flatten(soft).to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, c),
                 latents=lat.astype(np.float32),
                 scores={col[len(SCORE_PREFIX):]: table.column(col).to_numpy(zero_copy_only=False).astype(np.float32)
                         for col in table.column_names if col.startswith(SCORE_PREFIX)})


def iter_shards(root: str | os.PathLike) -> Iterator[Shard]:
    """Each finished shard of the artefact at ``root``, read and checked, in manifest order."""
    root = Path(root)
    m = read_manifest(root)
    for name in m.shards:
        yield read_shard(root, m, name)


def load_artefact(root: str | os.PathLike) -> "Annotations":
    """Read the manifest and every shard it lists (stray temp files are ignored)."""
    root = Path(root)
    m = read_manifest(root)
    shards = [read_shard(root, m, name) for name in m.shards]
    c, k, d = m.num_classes, m.num_perspectives, m.vector_dim
    return Annotations(
        manifest=m,
        query_ids=np.concatenate([s.query_ids for s in shards]) if shards else np.array([], dtype=object),
        item_ids=np.concatenate([s.item_ids for s in shards]) if shards else np.array([], dtype=object),
        rationales={p: [t for s in shards for t in s.rationales[p]] for p in m.perspectives},
        soft_labels=np.concatenate([s.soft_labels for s in shards]) if shards else np.zeros((0, c), np.float32),
        latents=np.concatenate([s.latents for s in shards]) if shards else np.zeros((0, k, d), np.float32),
        root=root)


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
                 strict_fingerprint: bool = True, superset: bool = False) -> None:
        """Check the artefact fits ``df`` and the student's config; ArtefactError listing every
        problem found. ``dataset_fingerprint`` defaults to the fingerprint of ``df``. A fingerprint
        mismatch is only a warning when ``strict_fingerprint=False``; an incomplete artefact is
        always only a warning (unannotated pairs are masked out downstream). ``superset=True``: the
        artefact may annotate pairs that ``df`` does not hold (one artefact for every fold of a
        cross-validation, a pool, other queries): they are ignored, pairs are matched by (query_id,
        item_id), and the dataset fingerprint is not compared."""
        m, where = self.manifest, self._where()
        problems: list[str] = []
        fingerprint = compute_fingerprint(df) if dataset_fingerprint is None else str(dataset_fingerprint)
        if m.dataset_fingerprint != fingerprint and not superset:
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
        if len(unknown) and not superset:
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
