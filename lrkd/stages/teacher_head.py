"""The teacher_head stage: the frozen teacher's readings + a head fitted on one split's / label
budget's gold train pairs -> that split's artefact for the student (seconds; no LLM runs).

What it computes is :func:`lrkd.teacher.label.head_artefact.write_head_artefact`: features from the
judgement reading (and the panels in ``stage.panels``), an ordinal head fitted on the gold pairs of
this data config's train split (``data.split``: one split or a cross-validation fold; ``data.gold``:
the budget), out-of-fold soft labels for those pairs, the head's for every other pair read, the
teacher scored on val and test. Default folder: ``artefacts/<data>/label_budget/f<fold>_s<gold
seed>_g<fraction>``, the one ``experiment=label_budget`` reads (whose student jobs also build it
themselves when it is missing).
"""
from __future__ import annotations

import time

from omegaconf import DictConfig

from lrkd.stages.base import StageRun
from lrkd.stages.teacher_common import load_pairs
from lrkd.teacher.label.head_artefact import write_head_artefact
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.utils import plain

STAGE = "teacher_head"


def run(cfg: DictConfig) -> dict:
    started = time.time()
    spec = cfg.stage
    dm = load_pairs(cfg)
    settings = {"panels": plain(spec.panels or []), "questions": plain(spec.get("questions")), "l2": float(spec.l2),
                "folds": int(spec.folds), "gold": plain(cfg.data.get("gold")), "split": plain(cfg.data.get("split")),
                "rationales": bool(spec.get("rationales", False)), "latent": str(spec.get("latent", "decision"))}

    def record(folder, metrics):
        stage = StageRun(cfg, STAGE, folder, settings, [dm.fingerprint])
        stage.started = started
        stage.record(metrics)

    metrics = write_head_artefact(
        dm, spec.out, reads_dir=spec.reads_dir, perspectives=[p.name for p in perspectives_from_config(cfg.perspective)],
        teacher=str(cfg.teacher.name), panels=settings["panels"], questions=settings["questions"], l2=settings["l2"],
        folds=settings["folds"], seed=int(cfg.seed), latent_dim=spec.get("latent_dim"),
        ece_bins=int(spec.get("ece_bins", 10)), shard_size=int(spec.get("artefact_shard_size", 2048)),
        extra={"teacher": plain(cfg.teacher)}, rationales=settings["rationales"], latent=settings["latent"],
        record=record)
    return {**metrics, "artefact": str(spec.out), "reused": False}


__all__ = ["run"]
