"""The teacher_dpo stage: preference optimisation of the SFT teacher on conflict samples
(``stage.pairs=conflict``) or on the multi-dimensional reward's best/worst pairs
(``stage.pairs=reward``: ``<work_dir>/reward/pairs.jsonl`` of the teacher_reward stage).

Reads ``<work_dir>/generations/`` and ``<work_dir>/sft/model/``, builds preference pairs
(:func:`lrkd.teacher.train.examples.preference_pairs`, at most ``stage.max_pairs``), trains with the
sigmoid DPO loss (:class:`lrkd.teacher.train.module.TeacherDPOModule`; reference = the SFT model: its
adapter disabled under LoRA, else log-probs computed once before training and kept in
``dpo/reference_logps.npz``), and writes ``<work_dir>/dpo/``: ``model/``, ``pairs.jsonl``,
``stage.json``. Without any conflict sample, ``dpo/model`` stands for the SFT model unchanged.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from omegaconf import DictConfig

from lrkd.schema import DataError
from lrkd.stages.base import StageRun, fingerprint_config, finish_training, require_finished
from lrkd.stages.teacher_common import (MODEL_FOLDER, TrainLoader, evaluate_on_test, fit_save_and_record,
                                        inference_device, load_pairs, optimizer_config, stage_without_defaults)
from lrkd.teacher.train.examples import (PreferenceCollator, PreferenceDataset, fits, preference_pairs,
                                   tokenize_prompt_completions, write_examples_jsonl)
from lrkd.teacher.train.generate import read_generations
from lrkd.teacher.train.module import TeacherDPOModule, load_trained_teacher, precompute_reference_logprobs, save_alias
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.teacher.reward.pairs import read_reward_pairs
from lrkd.utils import atomic_path

log = logging.getLogger(__name__)

STAGE = "teacher_dpo"
PAIR_SOURCES = ("conflict", "reward")
REFERENCE_FILE = "reference_logps.npz"


def reference_logprobs(module, dataset, pad_id: int, path: Path, fingerprint: str, batch_size: int):
    """The SFT model's log-probs of the pairs, computed once (before training) and kept in ``path``:
    a resumed run reads them instead of recomputing them from half-trained weights."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fingerprint and len(z["chosen"]) == len(dataset):
                return z["chosen"], z["rejected"]
    chosen, rejected = precompute_reference_logprobs(module.model, dataset, pad_id, batch_size=batch_size)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
        np.savez(f, chosen=chosen, rejected=rejected, fingerprint=np.array(fingerprint))
    return chosen, rejected


def run_teacher_dpo(cfg: DictConfig) -> dict:
    """Train with DPO (or reuse); returns the stage metrics and ``reused``."""
    gen_dir, gen_record = require_finished(cfg, "teacher_generate")
    sft_dir, sft_record = require_finished(cfg, "teacher_sft")
    kind = str(cfg.stage.get("pairs", "conflict"))
    if kind not in PAIR_SOURCES:
        raise ValueError(f"stage.pairs must be one of {PAIR_SOURCES}, got {kind!r}")
    inputs = [gen_record["fingerprint"], sft_record["fingerprint"]]
    if kind == "reward":
        reward_dir, reward_record = require_finished(cfg, "teacher_reward")
        inputs.append(reward_record["fingerprint"])
    dm = load_pairs(cfg)
    run = StageRun(cfg, STAGE, STAGE, fingerprint_config(cfg, stage=stage_without_defaults(cfg, pairs="conflict")),
                   [*inputs, dm.fingerprint])
    if (done := run.reused()) is not None:
        return done
    ckpt = run.start(resume=True)
    out, fingerprint = run.out, run.fingerprint
    perspectives = perspectives_from_config(cfg.perspective)
    sft_model = sft_dir / MODEL_FOLDER
    module = TeacherDPOModule(teacher=cfg.teacher, optimizer=optimizer_config(cfg.stage), init_from=str(sft_model),
                              beta=float(cfg.stage.beta))
    tokenizer = module.tokenizer
    if kind == "reward":  # best-of-n vs worst-of-n by the multi-dimensional reward, largest margin first
        records = read_reward_pairs(reward_dir)[:cfg.stage.get("max_pairs")]
        out.mkdir(parents=True, exist_ok=True)
        (out / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        pairs = [SimpleNamespace(**r) for r in records]
    else:
        pairs = preference_pairs(read_generations(gen_dir), dm.frame, perspectives, list(dm.label_set.names),
                                 tokenizer, max_pairs=cfg.stage.get("max_pairs"),
                                 max_item_words=cfg.teacher.get("max_item_words"))
        write_examples_jsonl(out / "pairs.jsonl", pairs)
    prompts = [p.prompt for p in pairs]
    chosen = tokenize_prompt_completions(tokenizer, prompts, [p.chosen for p in pairs], cfg.paths.cache_dir)
    rejected = tokenize_prompt_completions(tokenizer, prompts, [p.rejected for p in pairs], cfg.paths.cache_dir)
    keep = (fits(chosen, int(cfg.stage.max_length)) & fits(rejected, int(cfg.stage.max_length))).nonzero()[0]
    metrics = {"pairs": int(len(keep)), "pairs_too_long": int(len(pairs) - len(keep))}

    if len(keep) == 0:
        if pairs:
            raise DataError(f"every preference pair is longer than stage.max_length={cfg.stage.max_length} "
                            f"tokens; raise it", path=str(out / "pairs.jsonl"))
        log.warning("teacher_dpo: no %s pair from %s: the DPO teacher is the SFT teacher unchanged", kind, gen_dir)
        save_alias(out / MODEL_FOLDER, sft_model)
        finish_training(out, False)
        if cfg.stage.get("evaluate", False):
            model, tok = load_trained_teacher(cfg.teacher, out / MODEL_FOLDER)
            metrics.update(evaluate_on_test(cfg, model, tok, dm, perspectives, "dpo"))
        return run.finish(metrics)

    dataset = PreferenceDataset(chosen, rejected, keep)
    if module.needs_precomputed_reference:
        module.model.to(inference_device(cfg))
        dataset.set_reference(*reference_logprobs(module, dataset, tokenizer.pad_token_id, out / REFERENCE_FILE,
                                                  fingerprint, int(cfg.stage.get("reference_batch_size", 8))))
    data = TrainLoader(dataset, int(cfg.stage.batch_size), PreferenceCollator(tokenizer.pad_token_id), int(cfg.seed))
    return fit_save_and_record(cfg, module, data, run, ckpt, metrics=metrics, tokenizer=tokenizer, dm=dm,
                               perspectives=perspectives, eval_name="dpo")


run = run_teacher_dpo
