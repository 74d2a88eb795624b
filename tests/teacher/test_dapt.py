"""DAPT (teacher_dapt): the corpus holds train queries only and keeps held-out items out, packed
blocks are exactly block_size with no padding, the loss falls on repeated text, the DAPT model is
what SFT starts from, and a killed DAPT run resumes to the uninterrupted result."""
from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from lrkd.data.encode import item_text
from lrkd.stages.teacher_common import TrainLoader, init_teacher, load_pairs
from lrkd.stages.teacher_dapt import run_teacher_dapt
from lrkd.teacher.train.dapt import blocks_view, build_corpus, pack_blocks, perplexity, tokenize_and_pack
from lrkd.teacher.train.examples import CompletionCollator, CompletionDataset
from lrkd.teacher.train.module import TeacherSFTModule, load_trained_teacher
from tests.teacher.builders import tiny_teacher_cfg


def test_corpus_takes_train_queries_only_and_holds_items_out(make_cfg, tmp_path):
    dm = load_pairs(make_cfg("stage=teacher_dapt", "teacher=tiny"))
    frame, splits = dm.frame, dm.splits
    catalogue = tmp_path / "catalogue.csv"
    pd.DataFrame({"item_id": ["x1", "x2"], "item_title": ["Zebra ZT410 label printer", "Acme widget"],
                  "brand": ["Zebra", "Acme"]}).to_csv(catalogue, index=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("first note\n\n  second note  \n")
    corpus = build_corpus(frame, splits["train"], files=[catalogue, notes], heldout_fraction=0.1, seed=3)

    queries = {s: set(frame["query"].iloc[splits[s]].str.strip()) for s in ("train", "val", "test")}
    assert set(corpus.queries) == queries["train"]
    assert not set(corpus.documents) & (queries["val"] | queries["test"])  # no val/test query reaches it
    assert corpus.files == ["first note", "second note"]
    # every distinct item text once, in training or held out, never both (items of different ids can
    # share a text: a held-out text must not be trained on under another id); the catalogue's join them
    texts = {item_text(r, ["brand", "description", "attributes"]) for r in frame.to_dict("records")}
    n_items = len(texts) + 2
    assert len(corpus.items) + len(corpus.heldout) == n_items and not set(corpus.items) & set(corpus.heldout)
    assert frame["item_id"].nunique() > len(texts)  # the duplicates are there to be caught
    assert 0.05 * n_items < len(corpus.heldout) < 0.15 * n_items
    assert sum("Zebra ZT410 label printer. Brand: Zebra" == t for t in corpus.items + corpus.heldout) == 1
    # the held-out draw is stable per item id: another seed holds other items out
    other = build_corpus(frame, splits["train"], heldout_fraction=0.1, seed=4)
    assert set(other.heldout) != set(corpus.heldout)


def test_packing_is_exact_blocks_without_padding():
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=4, eos_id=0)
    # 1 2 3 0 | 4 5 0 6 | 7 8 9 0 -> three full blocks, nothing left
    np.testing.assert_array_equal(blocks, [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]])
    tail = pack_blocks([[1, 2, 3], [4, 5]], block_size=4, eos_id=0)  # 1 2 3 0 | 4 5 0 (tail dropped)
    np.testing.assert_array_equal(tail, [[1, 2, 3, 0]])
    with pytest.raises(ValueError, match="block_size"):
        pack_blocks([[1]], block_size=1, eos_id=0)


def test_tokenized_blocks_are_block_size_and_every_token_is_a_target(tmp_path):
    model_cfg = tiny_teacher_cfg(tmp_path / "cache")
    module = TeacherSFTModule(teacher=model_cfg, optimizer={"lr": 1e-3})
    tok = module.tokenizer
    texts = [f"HP Pavilion dv{i} notebook, 17 inch, silver" for i in range(40)]
    blocks = tokenize_and_pack(tok, texts, block_size=16)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    sep = 0 if tok.eos_token_id is None else 1
    assert blocks.shape == (sum(len(x) + sep for x in ids) // 16, 16)
    assert tok.pad_token_id not in set(blocks.ravel().tolist()) - {tok.eos_token_id}
    batch = CompletionCollator(tok.pad_token_id)([CompletionDataset(blocks_view(blocks))[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, 16) and bool(batch["attention_mask"].all())
    assert bool(batch["completion_mask"].all())  # next-token loss on every token


def test_loss_falls_on_repeated_text(tmp_path):
    L.seed_everything(0)
    module = TeacherSFTModule(teacher=tiny_teacher_cfg(tmp_path / "cache"), optimizer={"lr": 1e-2})
    tok = module.tokenizer
    blocks = tokenize_and_pack(tok, ["canon 725 toner cartridge black original"] * 60, block_size=16)
    before = perplexity(module.model, blocks)
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=TrainLoader(CompletionDataset(blocks_view(blocks)), 8,
                                               CompletionCollator(tok.pad_token_id), 0))
    after = perplexity(module.model, blocks)
    assert after < 0.01 * before and after < 10  # a repeated sentence is learnt: perplexity collapses


def _dapt_cfg(make_cfg, work, *extra):
    return make_cfg("stage=teacher_dapt", "teacher=tiny", "callbacks.progress_bar=null", f"stage.work_dir={work}",
                    "stage.max_blocks=16", "stage.block_size=32", "stage.batch_size=2", "stage.lr=1e-3",
                    "stage.eval_blocks=4", "stage.checkpoint_every_n_steps=2", *extra)


def test_dapt_model_is_where_sft_starts(make_cfg, tmp_path):
    work = tmp_path / "work"
    result = run_teacher_dapt(_dapt_cfg(make_cfg, work))
    assert result["steps"] == 8 and result["heldout_ppl/after"] < result["heldout_ppl/before"]
    model_dir, fingerprint = init_teacher(make_cfg("stage=teacher_sft", "teacher=tiny", f"stage.work_dir={work}",
                                                   "stage.init_from=dapt"))
    assert model_dir == work / "dapt" / "model" and len(fingerprint) == 64
    teacher = tiny_teacher_cfg(tmp_path / "cache")
    dapt, _ = load_trained_teacher(teacher, model_dir)
    base, _ = load_trained_teacher(teacher)
    sft = TeacherSFTModule(teacher=teacher, optimizer={"lr": 1e-3}, init_from=str(model_dir))
    for (name, a), (_, b), (_, c) in zip(sft.model.state_dict().items(), dapt.state_dict().items(),
                                         base.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"{name}: SFT does not start from the DAPT weights")
    assert any(not torch.equal(b, c) for b, c in zip(dapt.state_dict().values(), base.state_dict().values()))
    with pytest.raises(ValueError, match="init_from"):
        init_teacher(make_cfg("stage=teacher_sft", "teacher=tiny", "stage.init_from=sft"))


class Killed(RuntimeError):
    pass


def test_killed_dapt_resumes_to_the_uninterrupted_model(make_cfg, tmp_path, monkeypatch):
    full = run_teacher_dapt(_dapt_cfg(make_cfg, tmp_path / "full"))
    original = TeacherSFTModule.training_step

    def dying(self, batch, batch_idx):
        if self.global_step == 5:  # last.ckpt was written at step 4: step 5 is lost and redone
            raise Killed("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TeacherSFTModule, "training_step", dying)
    with pytest.raises(Killed):
        run_teacher_dapt(_dapt_cfg(make_cfg, tmp_path / "killed"))
    killed = tmp_path / "killed" / "dapt"
    assert not (killed / "stage.json").exists()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    monkeypatch.setattr(TeacherSFTModule, "training_step", original)
    resumed = run_teacher_dapt(_dapt_cfg(make_cfg, tmp_path / "killed"))
    assert resumed["steps"] == full["steps"] == 8 and not (killed / "checkpoints").exists()
    assert resumed["heldout_ppl/before"] == full["heldout_ppl/before"]  # recorded at the first start
    teacher = tiny_teacher_cfg(tmp_path / "cache")
    a, _ = load_trained_teacher(teacher, tmp_path / "full" / "dapt" / "model")
    b, _ = load_trained_teacher(teacher, killed / "model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=lambda m: f"{name} differs after resume: {m}")
