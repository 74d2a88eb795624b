"""The teacher_dapt stage: domain-adaptive pre-training (CRSD) of the base teacher on the platform's
own text, before SFT.

Builds the corpus (:func:`lrkd.teacher.train.dapt.build_corpus`: item texts, train-split queries only,
``stage.corpus.files``), packs it into blocks of ``stage.block_size`` tokens, and continues causal-LM
training with the teacher's LightningModule (full or LoRA, DDP/DeepSpeed, resume after a kill from
``dapt/checkpoints/last.ckpt``). Held-out items' perplexity and (``stage.evaluate``) the zero-shot
macro-F1 / QWK / parse rate are measured before and after. Writes ``<work_dir>/dapt/``: ``model/``,
``corpus.json`` (counts), ``stage.json``. teacher_generate and teacher_sft start from it with
``stage.init_from=dapt``.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
from omegaconf import DictConfig

from lrkd.schema import DataError
from lrkd.stages.base import StageRun, fingerprint_config
from lrkd.stages.teacher_common import (TrainLoader, evaluate_on_test, fit_save_and_record, inference_device, load_pairs,
                                        optimizer_config)
from lrkd.teacher.train.dapt import (blocks_view, build_corpus, files_fingerprint, perplexity, render_documents,
                               tokenize_and_pack)
from lrkd.teacher.train.examples import CompletionCollator, CompletionDataset
from lrkd.teacher.train.module import TeacherSFTModule
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.utils import plain

log = logging.getLogger(__name__)

STAGE = "teacher_dapt"


def _subset(blocks: np.ndarray, cap, seed: int) -> np.ndarray:
    """At most ``cap`` blocks, a seeded random subset in block order (all when cap is null)."""
    if cap is None or len(blocks) <= int(cap):
        return blocks
    keep = np.sort(np.random.default_rng(seed).permutation(len(blocks))[:int(cap)])
    return blocks[keep]


def run_teacher_dapt(cfg: DictConfig) -> dict:
    """Pre-train (or reuse); returns the stage metrics and ``reused``."""
    dm = load_pairs(cfg)
    corpus_cfg = plain(cfg.stage.corpus)
    files = [str(f) for f in (corpus_cfg.get("files") or [])]
    run = StageRun(cfg, STAGE, STAGE, fingerprint_config(cfg), [dm.fingerprint, *files_fingerprint(files)])
    if (done := run.reused()) is not None:
        return done
    ckpt = run.start(resume=True)
    seed = int(cfg.seed)
    corpus = build_corpus(dm.frame, dm.splits["train"], files=files, items=bool(corpus_cfg.get("items", True)),
                          queries=bool(corpus_cfg.get("queries", True)),
                          heldout_fraction=float(corpus_cfg.get("heldout_fraction", 0.02)), seed=seed)
    module = TeacherSFTModule(teacher=cfg.teacher, optimizer=optimizer_config(cfg.stage))
    tokenizer = module.tokenizer
    fmt, prompt = str(cfg.stage.get("format", "plain")), str(cfg.stage.get("chat_prompt", ""))
    block = int(cfg.stage.block_size)
    t0 = time.time()
    train = tokenize_and_pack(tokenizer, render_documents(tokenizer, corpus.documents, fmt, prompt), block)
    heldout = tokenize_and_pack(tokenizer, render_documents(tokenizer, corpus.heldout, fmt, prompt), block)
    tokens_all = int(train.size)
    train = _subset(train, cfg.stage.get("max_blocks"), seed)
    heldout = _subset(heldout, cfg.stage.get("eval_blocks"), seed)
    if len(train) == 0:
        raise DataError(f"the DAPT corpus ({corpus.counts()}) fills no block of {block} tokens: add "
                        f"stage.corpus.files or lower stage.block_size")
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "corpus.json").write_text(json.dumps({**corpus.counts(), "corpus_tokens": tokens_all,
                                                     "train_blocks": int(len(train)),
                                                     "heldout_blocks": int(len(heldout))}, indent=2) + "\n")
    log.info("teacher_dapt: corpus %s -> %d blocks of %d tokens (%d trained), %d held-out blocks (%.1f s)",
             corpus.counts(), tokens_all // block, block, len(train), len(heldout), time.time() - t0)

    perspectives = perspectives_from_config(cfg.perspective)
    batch = int(cfg.stage.get("eval_batch_size", 8))

    def held_out_perplexity(model) -> float:
        model.to(inference_device(cfg))
        return round(perplexity(model, heldout, batch), 4)

    metrics = {**corpus.counts(), "corpus_tokens": tokens_all, "train_blocks": int(len(train)),
               "train_tokens": int(train.size), "heldout_blocks": int(len(heldout)), "block_size": block}
    if ckpt is None:  # before training (a resumed run keeps the recorded figures of its first start)
        metrics["heldout_ppl/before"] = held_out_perplexity(module.model)
        metrics.update(evaluate_on_test(cfg, module.model, tokenizer, dm, perspectives, "zero_shot"))
        (run.out / "before.json").write_text(json.dumps(metrics, indent=2) + "\n")
    elif (run.out / "before.json").is_file():
        metrics.update(json.loads((run.out / "before.json").read_text()))
    module.model.train()
    data = TrainLoader(CompletionDataset(blocks_view(train)), int(cfg.stage.batch_size),
                       CompletionCollator(tokenizer.pad_token_id), seed)
    fit_start = time.time()

    def after(model) -> dict:
        seconds = time.time() - fit_start
        return {"heldout_ppl/after": held_out_perplexity(model), "fit_seconds": round(seconds, 1),
                "tokens_per_s": round(int(train.size) * int(cfg.stage.epochs) / max(seconds, 1e-9), 1)}

    return fit_save_and_record(cfg, module, data, run, ckpt, metrics=metrics, tokenizer=tokenizer, dm=dm,
                               perspectives=perspectives, eval_name="dapt", after=after)


run = run_teacher_dapt
