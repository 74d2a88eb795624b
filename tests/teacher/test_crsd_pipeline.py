"""CRSD's teacher end to end: experiment=pipeline with DAPT first and DPO on the reward's pairs
(the tiny teacher, scripted sampling), every stage run, the DAPT fingerprint flowing into the later
stages."""
from __future__ import annotations

import json

import pandas as pd

from lrkd.stages.base import read_stage_record
from lrkd.stages.pipeline import run_pipeline
from lrkd.teacher.runtime.hf import LocalHFBackend
from lrkd.teacher.train.module import read_model_record
from tests.teacher.test_pipeline import PIPELINE, scripted_generate

CRSD = ["stage.dapt.enabled=true", "stage.dpo.pairs=reward", "stage.dapt.max_blocks=6", "stage.dapt.block_size=32",
        "stage.dapt.eval_blocks=2", "stage.dapt.lr=1e-3", "stage.reward.min_margin=0.1"]


def test_pipeline_with_dapt_and_reward_pairs_runs_every_stage(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalHFBackend, "generate", scripted_generate)
    work = tmp_path / "work"
    result = run_pipeline(make_cfg(*PIPELINE, *CRSD, f"stage.work_dir={work}", output_dir=tmp_path / "run1"))
    for key in ("dapt", "generate", "sft", "reward", "dpo", "annotate"):
        assert result[f"reused/{key}"] is False, key
    assert result["dapt/train_blocks"] == 6 and result["dapt/heldout_ppl/after"] < result["dapt/heldout_ppl/before"]

    dapt_fp = read_stage_record(work / "dapt")["fingerprint"]
    assert read_model_record(work / "dapt" / "model")["kind"] == "full"

    # DPO trained on the reward stage's pairs: the same prompts, chosen and rejected texts
    reward_pairs = [json.loads(x) for x in (work / "reward" / "pairs.jsonl").read_text().splitlines()]
    dpo_pairs = [json.loads(x) for x in (work / "dpo" / "pairs.jsonl").read_text().splitlines()]
    assert len(reward_pairs) > 0 and dpo_pairs == reward_pairs[:4] and result["dpo/pairs"] == len(dpo_pairs)
    assert all(p["margin"] > 0.1 and p["chosen_scores"]["combined"] > p["rejected_scores"]["combined"]
               for p in reward_pairs)
    scores = pd.read_parquet(work / "reward" / "scores.parquet")
    assert len(scores) == result["reward/candidates"] == 6 * 4  # one row per (pair, sample)
    assert {"correctness", "format", "consistency", "faithfulness", "combined"} <= set(scores.columns)

    # a changed DAPT setting re-runs every stage after it (its fingerprint flows into them)
    again = run_pipeline(make_cfg(*PIPELINE, *CRSD, "stage.dapt.lr=2e-3", f"stage.work_dir={work}",
                                  output_dir=tmp_path / "run2"))
    assert [again[f"reused/{k}"] for k in ("dapt", "generate", "sft", "reward", "dpo")] == [False] * 5
    assert read_stage_record(work / "dapt")["fingerprint"] != dapt_fp
