"""Writing one annotation artefact from several ranks (``stage=teacher_annotate`` under DDP).

Rank r annotates ``rows[r::W]`` (:meth:`lrkd.lightning.distributed.Ranks.shard`) into its own part, an
ordinary resumable artefact (:class:`lrkd.artefact.writer.ArtefactWriter`) at
``<artefact>.ranks/rank-<r>/``, so no two processes ever write one manifest. When every rank has
finished, rank 0 copies the parts' rows into the artefact itself, shard by shard, through its
writer, finalizes it and removes the parts. The result holds the same rows as a single process's
artefact (shards split differently; readers align rows by ``(query_id, item_id)``).

Resuming: a killed run leaves its parts (and, if killed while merging, a partly merged artefact).
Run again with the same config and any number of ranks: pairs already in the artefact or in any
part are not annotated again, and the merge skips pairs the artefact already holds. Parts written
with other settings (another ``extra`` record: the stage fingerprint) are removed by rank 0.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lrkd.artefact.manifest import MANIFEST_NAME, ArtefactManifest, read_manifest
from lrkd.artefact.reader import iter_shards, read_shard_keys
from lrkd.artefact.writer import ArtefactWriter
from lrkd.lightning.distributed import Ranks

log = logging.getLogger(__name__)

PARTS_SUFFIX = ".ranks"


def parts_dir(root: str | os.PathLike) -> Path:
    """``<artefact>.ranks``: where the ranks' parts live (beside the artefact, not in it)."""
    root = Path(root)
    return root.with_name(root.name + PARTS_SUFFIX)


def artefact_keys(root: str | os.PathLike) -> set[tuple[str, str]]:
    """The (query_id, item_id) pairs of the finished shards of the artefact at ``root`` (empty when
    there is none yet)."""
    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        return set()
    keys: set[tuple[str, str]] = set()
    for name in read_manifest(root).shards:
        keys.update(read_shard_keys(root, name))
    return keys


def _same_record(manifest: ArtefactManifest, extra: Mapping | None) -> bool:
    return json.loads(json.dumps(dict(extra or {}), default=str)) == manifest.extra


class RankedArtefactWriter:
    """This rank's writer; the same methods as :class:`ArtefactWriter` that
    :func:`lrkd.teacher.label.annotate.annotate_pool` and the stage use (``completed_keys``,
    ``completed_shards``, ``write_shard``, ``finalize``). Every rank must construct it and call
    ``finalize`` (both hold barriers)."""

    def __init__(self, root: str | os.PathLike, ranks: Ranks, **manifest):
        self.root, self.ranks, self._manifest_args = Path(root), ranks, manifest
        self.parts = parts_dir(self.root)
        self.main: ArtefactWriter | None = None
        if ranks.is_zero:
            self._remove_foreign_parts(manifest.get("extra"))
            self.main = ArtefactWriter(self.root, **manifest)  # creates, or resumes, the artefact
        ranks.barrier()
        self.local = ArtefactWriter(self.parts / f"rank-{ranks.rank:05d}", **manifest)
        ranks.barrier()  # every part exists: read what any rank already holds
        done = artefact_keys(self.root)
        for part in sorted(self.parts.glob("rank-*")):
            done |= artefact_keys(part)
        self._done = done

    def _remove_foreign_parts(self, extra) -> None:
        if not self.parts.is_dir():
            return
        for part in sorted(self.parts.glob("rank-*")):
            try:
                keep = _same_record(read_manifest(part), extra)
            except Exception:  # noqa: BLE001 - an unreadable part is not resumable
                keep = False
            if not keep:
                log.warning("removing the annotation part %s: written with other settings", part)
                shutil.rmtree(part)

    @property
    def manifest(self) -> ArtefactManifest:
        return self.local.manifest

    def completed_keys(self) -> set[tuple[str, str]]:
        """Pairs any rank, or the artefact itself, already holds."""
        return self._done | self.local.completed_keys()

    def completed_shards(self) -> set[int]:
        return self.local.completed_shards()

    def write_shard(self, shard_id: int, query_ids: Sequence[str], item_ids: Sequence[str], *args, **kwargs) -> None:
        self.local.write_shard(shard_id, query_ids, item_ids, *args, **kwargs)

    def finalize(self) -> ArtefactManifest:
        """Wait for every rank; rank 0 merges the parts into the artefact, finalizes it and removes
        the parts; every rank returns the final manifest."""
        self.ranks.barrier()
        if self.ranks.is_zero:
            self._merge()
        self.ranks.barrier()
        return read_manifest(self.root)

    def _merge(self) -> None:
        main = self.main
        next_id = max(main.completed_shards(), default=-1) + 1
        for part in sorted(self.parts.glob("rank-*")):
            for shard in iter_shards(part):
                have = main.completed_keys()
                keep = np.array([(q, i) not in have for q, i in zip(shard.query_ids, shard.item_ids)], dtype=bool)
                if not keep.any():
                    continue
                idx = np.flatnonzero(keep)
                main.write_shard(next_id, [shard.query_ids[j] for j in idx], [shard.item_ids[j] for j in idx],
                                 {p: [t[j] for j in idx] for p, t in shard.rationales.items()},
                                 shard.soft_labels[idx], shard.latents[idx])
                next_id += 1
        manifest = main.finalize()
        shutil.rmtree(self.parts, ignore_errors=True)
        log.info("annotation: merged the parts of %d ranks into %s (%d pairs, %d shards)", self.ranks.world_size,
                 self.root, manifest.num_rows, len(manifest.shards))


def artefact_writer(root: str | os.PathLike, ranks: Ranks, **manifest):
    """An :class:`ArtefactWriter` for one process; a :class:`RankedArtefactWriter` for several."""
    return RankedArtefactWriter(root, ranks, **manifest) if ranks.distributed else ArtefactWriter(root, **manifest)
