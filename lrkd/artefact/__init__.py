"""The teacher annotation artefact: the contract between the teacher stage and the student.

On disk (schema version 1) an artefact is a directory::

    manifest.json                 ArtefactManifest as JSON; lists only finished shards
    shard-00000.parquet           query_id, item_id (str), rationale_<perspective> (str) per
                                  perspective, soft_label (list<float32>, C values summing to 1)
    shard-00000.safetensors       {"latents": [n, K, D] float16}, row-aligned with the parquet shard

The package: :mod:`~lrkd.artefact.manifest` (the manifest, file names, errors),
:mod:`~lrkd.artefact.writer` (:class:`ArtefactWriter`), :mod:`~lrkd.artefact.reader` (the one shard
reader, :func:`load_artefact`, :class:`Annotations`) and :mod:`~lrkd.artefact.ranks` (one artefact
written by several ranks). The names below are re-exported here.

The teacher writes it with :class:`ArtefactWriter`, shard by shard, each shard atomically (temp
files, then ``os.replace``; the manifest is rewritten last), so a killed writer resumes with the
shards it finished. One writer per directory at a time. The student reads it with
:func:`load_artefact`, checks it against its dataset and config with :meth:`Annotations.validate`
and maps it onto the dataset rows with :meth:`Annotations.align` (pairs without an annotation
are allowed: they are masked out of the distillation terms downstream).

C = number of grades (``label_names``), K = number of perspectives, D = ``vector_dim``.
"""
from lrkd.artefact.manifest import (LATENTS_KEY, MANIFEST_NAME, PROBABILITY_TOLERANCE, RATIONALE_PREFIX, SCHEMA_VERSION,
                                    ArtefactError, ArtefactManifest, ArtefactWarning, rationale_column, read_manifest,
                                    shard_name)
from lrkd.artefact.reader import (AlignedAnnotations, Annotations, Shard, format_rationales, iter_shards,
                                  load_artefact, perspective_title, read_shard)
from lrkd.artefact.writer import ArtefactWriter

__all__ = ["SCHEMA_VERSION", "MANIFEST_NAME", "LATENTS_KEY", "RATIONALE_PREFIX", "PROBABILITY_TOLERANCE",
           "ArtefactError", "ArtefactWarning", "ArtefactManifest", "ArtefactWriter", "Annotations",
           "AlignedAnnotations", "Shard", "load_artefact", "read_manifest", "read_shard", "iter_shards",
           "rationale_column", "shard_name", "perspective_title", "format_rationales"]
