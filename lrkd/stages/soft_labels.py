"""The soft_labels stage: a trained student (``stage.checkpoint``) labels ``stage.splits``' pairs and
writes a teacher artefact (lrkd.artefact) that a smaller student distils from (``loss=kd``).

Per pair: soft label = softmax(logits / ``stage.temperature``) [C]; latent targets = the student's
pooled vector h [P], one copy per perspective ([K, P]); rationales empty. The artefact's dataset
fingerprint is the data module's, so the student stage accepts it for the same ``data`` config
(any ``data.max_length``: the fingerprint is of the pairs, not of their tokens). The pairs are
tokenized at ``data.max_length``: give the full student's own.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lrkd.artefact import ArtefactWriter
from lrkd.data.batch import INPUT_KEYS
from lrkd.student.checkpoint import load_student
from lrkd.student.model import RelevanceStudent

log = logging.getLogger(__name__)
SHARD_SIZE = 1024


@torch.inference_mode()
def soft_labels(student: RelevanceStudent, loader, temperature: float = 1.0):
    """(pair rows [N], soft labels [N, C], pooled h [N, P]) of every batch of ``loader``."""
    if temperature <= 0:
        raise ValueError(f"stage.temperature must be > 0, got {temperature}")
    rows, probs, pooled = [], [], []
    for batch in loader:
        h, _, logits = student.features(*(batch.get(k) for k in INPUT_KEYS))
        rows.append(batch["pair_index"].numpy())
        probs.append((logits.float() / temperature).softmax(-1).numpy())
        pooled.append(h.float().numpy())
    return np.concatenate(rows), np.concatenate(probs), np.concatenate(pooled)


def run(cfg: DictConfig) -> dict:
    student = load_student(str(cfg.stage.checkpoint)).model
    datamodule = instantiate(cfg.data, annotations=None, with_augmented_view=False, seed=cfg.seed, _recursive_=False)
    datamodule.setup("fit")
    names = list(datamodule.spec.label_set.names)
    if list(student.label_set.names) != names:
        raise ValueError(f"the student {cfg.stage.checkpoint} grades {list(student.label_set.names)}, "
                         f"the data {names}: not the same label set")
    out = Path(str(cfg.stage.out_dir))
    if out.exists():
        shutil.rmtree(out)
    perspectives = list(cfg.perspectives)
    writer = None
    total = 0
    for split in cfg.stage.splits:
        loader = datamodule.ordered_loader(str(split), int(cfg.stage.batch_size))
        rows, probs, pooled = soft_labels(student, loader, float(cfg.stage.temperature))
        if writer is None:
            writer = ArtefactWriter(out, teacher_id=f"student:{cfg.stage.checkpoint}", perspectives=perspectives,
                                    label_names=names, vector_dim=int(pooled.shape[1]),
                                    dataset_fingerprint=datamodule.fingerprint,
                                    extra={"soft_labels": "student", "temperature": float(cfg.stage.temperature)})
        frame = datamodule.frame.iloc[rows]
        for start in range(0, len(rows), SHARD_SIZE):
            part = slice(start, start + SHARD_SIZE)
            n = len(rows[part])
            latents = np.repeat(pooled[part][:, None, :], len(perspectives), axis=1)
            writer.write_shard(len(writer.completed_shards()), frame["query_id"].iloc[part].tolist(),
                               frame["item_id"].iloc[part].tolist(), {p: [""] * n for p in perspectives},
                               probs[part], latents)
        total += len(rows)
        agree = float((probs.argmax(1) == datamodule.frame["label"].to_numpy()[rows]).mean())
        log.info("soft labels of %d %s pairs (argmax = gold for %.3f of them)", len(rows), split, agree)
    manifest = writer.finalize()
    log.info("wrote the artefact %s (%d rows): train a student on it with data.annotations=%s loss=kd",
             out, manifest.num_rows, out)
    return {"artefact": str(out), "rows": int(total)}
