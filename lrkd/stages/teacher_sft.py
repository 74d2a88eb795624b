"""The teacher_sft stage: supervised fine-tuning of the teacher on its kept MPCoT rationales.

Reads ``<work_dir>/generations/`` (teacher_generate), builds the SFT examples
(:func:`lrkd.teacher.train.examples.sft_examples`), fine-tunes the base teacher (or, with
``stage.init_from=dapt``, the teacher_dapt model) (full, or a LoRA adapter
when ``teacher.lora`` is set) with a Lightning trainer, and writes ``<work_dir>/sft/``:
``model/`` (the trained teacher, :func:`lrkd.teacher.train.module.save_teacher`), ``examples.jsonl``,
``stage.json``. Reused when its fingerprint (this config, the generations and the dataset) is
unchanged; a killed run resumes from ``sft/checkpoints/last.ckpt``.
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from lrkd.schema import DataError
from lrkd.stages.base import StageRun, fingerprint_config, require_finished
from lrkd.stages.teacher_common import (TrainLoader, evaluate_on_test, fit_save_and_record, init_teacher, load_pairs,
                                        optimizer_config, stage_without_defaults)
from lrkd.teacher.train.examples import (CompletionCollator, CompletionDataset, fits, sft_examples,
                                   tokenize_prompt_completions, write_examples_jsonl)
from lrkd.teacher.train.generate import read_generations
from lrkd.teacher.train.module import TeacherSFTModule
from lrkd.teacher.prompts import perspectives_from_config

log = logging.getLogger(__name__)

STAGE = "teacher_sft"


def run_teacher_sft(cfg: DictConfig) -> dict:
    """Fine-tune (or reuse); returns the stage metrics and ``reused``."""
    gen_dir, gen_record = require_finished(cfg, "teacher_generate")
    init_dir, init_fingerprint = init_teacher(cfg)
    dm = load_pairs(cfg)
    inputs = [gen_record["fingerprint"], dm.fingerprint] + ([init_fingerprint] if init_dir is not None else [])
    run = StageRun(cfg, STAGE, STAGE, fingerprint_config(cfg, stage=stage_without_defaults(cfg, init_from="base")),
                   inputs)
    if (done := run.reused()) is not None:
        return done
    ckpt = run.start(resume=True)
    out = run.out
    perspectives = perspectives_from_config(cfg.perspective)
    grade_names = list(dm.label_set.names)
    module = TeacherSFTModule(teacher=cfg.teacher, optimizer=optimizer_config(cfg.stage),
                              init_from=str(init_dir) if init_dir is not None else None)
    tokenizer = module.tokenizer

    examples = sft_examples(read_generations(gen_dir), dm.frame, perspectives, grade_names, tokenizer,
                            max_item_words=cfg.teacher.get("max_item_words"))
    if cfg.stage.get("max_examples") is not None:
        examples = examples[:int(cfg.stage.max_examples)]
    if not examples:
        raise DataError(f"no SFT example: no generated pair has a correct rationale for every perspective "
                        f"(see {gen_dir / 'stats.json'}). Sample more (stage.n, stage.max_pairs of teacher_generate) "
                        f"or use a stronger teacher", path=str(gen_dir))
    write_examples_jsonl(out / "examples.jsonl", examples)
    view = tokenize_prompt_completions(tokenizer, [e.prompt for e in examples], [e.completion for e in examples],
                                       cfg.paths.cache_dir)
    keep = fits(view, int(cfg.stage.max_length)).nonzero()[0]
    if len(keep) == 0:
        raise DataError(f"every SFT example is longer than stage.max_length={cfg.stage.max_length} tokens "
                        f"(shortest: {int(view.lengths.min())}); raise it", path=str(out / "examples.jsonl"))
    if len(keep) < len(examples):
        log.warning("teacher_sft: %d of %d examples exceed max_length=%d tokens and are left out",
                    len(examples) - len(keep), len(examples), cfg.stage.max_length)

    metrics = {"examples": int(len(keep)), "examples_too_long": int(len(examples) - len(keep)),
               **evaluate_on_test(cfg, module.model, tokenizer, dm, perspectives, "zero_shot")}
    data = TrainLoader(CompletionDataset(view, keep), int(cfg.stage.batch_size),
                       CompletionCollator(tokenizer.pad_token_id), int(cfg.seed))
    return fit_save_and_record(cfg, module, data, run, ckpt, metrics=metrics, tokenizer=tokenizer, dm=dm,
                               perspectives=perspectives, eval_name="sft")


run = run_teacher_sft
