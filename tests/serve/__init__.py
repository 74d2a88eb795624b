"""Helpers for the serving tests: a tiny student from the real config files, and its checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# Three grades whose gains and values differ, so expected_gain and expected_relevance differ.
LABELS = {"names": ["exact", "partial", "irrelevant"], "gains": [3.0, 1.0, 0.0], "values": [1.0, 0.5, 0.0],
          "relevant_up_to": 0}


def tiny_student(extractor: str = "mlp", seed: int = 0, logit_scale: float = 5.0, decision: dict | None = None):
    """A StudentModule from conf/student/tiny.yaml, conf/extractor/<extractor>.yaml and conf/loss/ce.yaml,
    in eval mode. The classifier's weights are scaled by ``logit_scale`` so the probabilities are far from
    uniform and move with the input (a wrong input format then shows in them)."""
    from omegaconf import OmegaConf

    from lrkd.schema import DataSpec, LabelSet
    from lrkd.student.module import StudentModule

    torch.manual_seed(seed)
    spec = DataSpec(label_set=LabelSet.from_config(LABELS)).to_dict()
    module = StudentModule(encoder=OmegaConf.load(CONF / "student" / "tiny.yaml"),
                           extractor=OmegaConf.load(CONF / "extractor" / f"{extractor}.yaml"),
                           loss=OmegaConf.load(CONF / "loss" / "ce.yaml"),
                           optimizer=OmegaConf.load(CONF / "optimizer" / "adamw.yaml"), data_spec=spec,
                           decision=decision)
    with torch.no_grad():
        module.student.classifier[-1].weight.mul_(logit_scale)
    return module.eval()


def fit_and_save(module, path: Path) -> Path:
    """One optimizer step with a Lightning Trainer on a contract batch, then ``save_checkpoint``."""
    import lightning as L
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(1000, 5000, (4, 12), generator=g),
             "attention_mask": torch.ones(4, 12, dtype=torch.long),
             "token_type_ids": torch.zeros(4, 12, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 0]), "relevance": torch.full((4,), float("nan")),
             "query_index": torch.tensor([0, 0, 1, 1]), "pair_index": torch.arange(4)}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=str(path.parent))
    module.train()
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(str(path))
    module.eval()
    return path


def reference_probs(module, tokenizer, query: str, item: str, max_length: int = 128) -> np.ndarray:
    """The module's class probabilities [C] for one pair, tokenized on its own (no padding) with the
    standard call ``tokenizer(query, item, truncation="only_second", max_length=...)``."""
    enc = tokenizer(query, item, truncation="only_second", max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        logits = module.predict_logits(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return logits.softmax(-1)[0].numpy()


def load_minilm_tokenizer():
    from transformers import AutoTokenizer

    from lrkd.encoders import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(MINILM))
