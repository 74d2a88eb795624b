"""The teacher's training: SFT and DPO LightningModules, and the teacher checkpoints of the stages.

Both modules are built from plain dicts (so a Lightning checkpoint's hyper-parameters load with
``weights_only=True``):

    teacher:   conf/teacher/*.yaml as a dict (see :func:`lrkd.teacher.model.load_teacher`); ``lora``
               set = LoRA fine-tuning of a fresh adapter, null = full fine-tuning;
               ``gradient_checkpointing`` as configured
    optimizer: {lr, weight_decay, warmup_ratio, betas, eps}
    init_from: a model directory written by :func:`save_teacher` (the SFT model for DPO), or None
               for the base teacher

Batches come from :mod:`lrkd.teacher.train.examples` (left-padded, ``completion_mask``). A forward
computes logits only for the completion window (``logits_to_keep``), never for the whole prompt.

A saved teacher (``<work_dir>/<stage>/model/``) is a Hugging Face directory plus
``lrkd_teacher.json`` = {"kind": "full" | "adapter" | "alias", "parent": relative dir | null}:
``full`` = save_pretrained weights; ``adapter`` = a peft LoRA adapter over its parent (the base
teacher when null), ``alias`` = the same model as its parent (DPO without any preference pair).
:func:`load_trained_teacher` follows the chain and merges the adapters.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lrkd.losses import NonFiniteLossError
from lrkd.losses.dpo import dpo_loss, reward_statistics
from lrkd.losses.lm import completion_logprobs, completion_nll
from lrkd.teacher.train.examples import PreferenceCollator, PreferenceDataset
from lrkd.lightning.optim import configure, total_training_steps
from lrkd.teacher.model import apply_lora, load_teacher, save_pretrained_atomically
from lrkd.utils import plain

log = logging.getLogger(__name__)

MODEL_RECORD = "lrkd_teacher.json"
MODEL_KINDS = ("full", "adapter", "alias")


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


# ------------------------------------------------------------------------------- saved teachers
def save_teacher(model, tokenizer, out_dir: str | os.PathLike, parent: str | os.PathLike | None = None) -> Path:
    """Write the model (full weights, or the LoRA adapter of a peft model over ``parent``) and the
    tokenizer into ``out_dir`` atomically (a temp dir renamed into place)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    kind = "adapter" if is_peft_model(model) else "full"
    record = {"kind": kind, "parent": os.path.relpath(parent, out_dir) if (parent and kind == "adapter") else None}
    return save_pretrained_atomically(model, tokenizer, out_dir, MODEL_RECORD, json.dumps(record, indent=2) + "\n")


def save_alias(out_dir: str | os.PathLike, parent: str | os.PathLike) -> Path:
    """A model directory that stands for ``parent`` unchanged (a stage that had nothing to train)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / MODEL_RECORD).write_text(json.dumps({"kind": "alias", "parent": os.path.relpath(parent, out_dir)}) + "\n")
    return out_dir


def read_model_record(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / MODEL_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a teacher saved by an lrkd stage (no {MODEL_RECORD}); "
                                f"run the stage that writes it (teacher_sft / teacher_dpo)")
    record = json.loads(path.read_text())
    if record.get("kind") not in MODEL_KINDS:
        raise ValueError(f"{path}: unknown kind {record.get('kind')!r} (expected one of {MODEL_KINDS})")
    return record


def _merged_teacher(cfg: dict, model_dir: str | os.PathLike | None):
    """(plain model with every adapter of the chain merged, tokenizer); no LoRA, no checkpointing."""
    bare = {**cfg, "lora": None, "gradient_checkpointing": False}
    if model_dir is None:
        return load_teacher(bare)
    model_dir = Path(model_dir)
    record = read_model_record(model_dir)
    parent = (model_dir / record["parent"]).resolve() if record.get("parent") else None
    if record["kind"] == "full":
        return load_teacher({**bare, "model": str(model_dir), "tokenizer": str(model_dir), "config": None,
                             "gguf_file": None})
    model, tokenizer = _merged_teacher(cfg, parent)
    if record["kind"] == "alias":
        return model, tokenizer
    from peft import PeftModel  # the teacher extra, for LoRA only

    return PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload(), tokenizer


def load_trained_teacher(teacher: Mapping, model_dir: str | os.PathLike | None = None):
    """(model, tokenizer) of a teacher written by :func:`save_teacher` (the base teacher when
    ``model_dir`` is None), adapters merged, in eval mode, for inference."""
    model, tokenizer = _merged_teacher(dict(plain(teacher)), model_dir)
    return model.eval(), tokenizer


def trainable_teacher(teacher: Mapping, init_from: str | os.PathLike | None = None):
    """(model, tokenizer) to train: the base teacher or ``init_from`` (merged), wrapped with a fresh
    LoRA adapter when ``teacher.lora`` is set, gradient checkpointing when configured."""
    cfg = dict(plain(teacher))
    if init_from is None:
        return load_teacher(cfg)
    model, tokenizer = _merged_teacher(cfg, init_from)
    if cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    if cfg.get("lora"):
        if cfg.get("gradient_checkpointing"):
            model.enable_input_require_grads()
        model = apply_lora(model, cfg["lora"])
    return model, tokenizer


# ------------------------------------------------------------------------------------- forward
def completion_window_logits(model, batch: Mapping[str, torch.Tensor]):
    """One forward over left-padded prompt + completion rows, logits only where needed.

    Returns (logits [B, W, V], input_ids [B, W], completion_mask [B, W]) for the last W positions,
    W = (longest completion) + 1: enough to predict every completion token."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    width = min(int(mask.sum(dim=1).max()) + 1, ids.shape[1])
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], position_ids=batch.get("position_ids"),
                use_cache=False, logits_to_keep=width)
    return out.logits, ids[:, -width:], mask[:, -width:]


def sequence_logprobs(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """log π(completion | prompt) of every row: [B] float32, summed over completion tokens."""
    return completion_logprobs(*completion_window_logits(model, batch))


@torch.no_grad()
def precompute_reference_logprobs(model, dataset: PreferenceDataset, pad_id: int, batch_size: int = 8,
                                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """log π_ref of every chosen and rejected completion of ``dataset`` ([N] float32 each, item
    order), from ``model`` in eval mode; its training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=PreferenceCollator(pad_id))
    try:
        for batch in tqdm(loader, desc="reference log-probs", disable=not progress):
            logps = sequence_logprobs(model, batch)
            b = len(batch["pair_index"])
            chosen.append(logps[:b].cpu().numpy())
            rejected.append(logps[b:].cpu().numpy())
    finally:
        model.train(was_training)
    empty = np.zeros(0, np.float32)
    return (np.concatenate(chosen) if chosen else empty), (np.concatenate(rejected) if rejected else empty)


# ------------------------------------------------------------------------------------- modules
class _TeacherModule(L.LightningModule):
    """Model loading, the optimizer (AdamW, linear warm-up then decay), finite-loss check."""

    def __init__(self, teacher: dict, optimizer: dict, init_from: str | None = None, **extra):
        super().__init__()
        teacher, optimizer = plain(teacher), plain(optimizer)
        init_from = str(init_from) if init_from is not None else None
        self.save_hyperparameters({"teacher": teacher, "optimizer": optimizer, "init_from": init_from, **extra})
        self.model, self.tokenizer = trainable_teacher(teacher, init_from)
        self.train()

    @property
    def uses_lora(self) -> bool:
        return is_peft_model(self.model)

    def _check_finite(self, loss: torch.Tensor, batch_idx: int, what: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite teacher {what} loss {float(loss)} at global step {self.global_step}, "
                                     f"epoch {self.current_epoch}, batch {batch_idx}")

    def save_model(self, out_dir: str | os.PathLike) -> Path:
        """The trained teacher -> ``out_dir`` (adapter over ``init_from`` under LoRA)."""
        return save_teacher(self.model, self.tokenizer, out_dir, parent=self.hparams.init_from)

    def configure_optimizers(self):
        """``optimizer`` (a partial config, or the stage's plain {lr, weight_decay, warmup_ratio}) over
        the model's parameters and its schedule (lrkd.lightning.optim)."""
        return configure(self, self.model.named_parameters(), self.hparams.optimizer, self.hparams.get("scheduler"),
                         total_training_steps(self.trainer), default_warmup_ratio=0.0)


class TeacherSFTModule(_TeacherModule):
    """Supervised fine-tuning: mean NLL of the completion tokens, the prompt masked out.

    Under gradient accumulation (``trainer.accumulate_grad_batches`` = k) and across DDP ranks the
    mean is over every completion token of the optimizer step, as TRL / transformers do
    (``num_items_in_batch``), not the mean of the micro-batches' means: each micro-batch
    back-propagates its token *sum*, and before the optimizer step the gradients are divided by the
    step's token count (summed over ranks). The logged ``train/loss`` stays the micro-batch's mean.
    Under DeepSpeed, which owns the gradients, the micro-batch mean is used as before.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_tokens = 0

    def _sums_tokens(self) -> bool:
        return "deepspeed" not in type(self.trainer.strategy).__name__.lower()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, input_ids, completion_mask = completion_window_logits(self.model, batch)
        loss = completion_nll(logits, input_ids, completion_mask)
        self._check_finite(loss, batch_idx, "SFT")
        b = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=b)
        if not self._sums_tokens():
            return loss
        tokens = int(completion_mask[:, 1:].sum())
        self._step_tokens += tokens
        # Lightning divides the returned loss by k: back-propagate the token sum
        return loss * tokens * self.trainer.accumulate_grad_batches

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self._sums_tokens() or self._step_tokens == 0:
            return
        tokens = torch.tensor(float(self._step_tokens), device=self.device)
        total = float(self.trainer.strategy.reduce(tokens, reduce_op="sum"))
        # DDP averages the ranks' gradients: (1/W) sum_r g_r, so W / total gives sum_r g_r / total
        scale = self.trainer.world_size / max(total, 1.0)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self._step_tokens = 0


class TeacherDPOModule(_TeacherModule):
    """Sigmoid DPO against the frozen SFT model (``init_from``).

    The reference: under LoRA, the same network with its adapter disabled (no grad); for a full
    fine-tune, log-probs computed once before training (:func:`precompute_reference_logprobs`) and
    served in the batch (``ref_chosen_logps``, ``ref_rejected_logps``). Never a second model copy.
    Logs train/loss, train/rewards_chosen, train/rewards_rejected, train/reward_margin,
    train/reward_accuracy.
    """

    def __init__(self, teacher: dict, optimizer: dict, init_from: str | None = None, beta: float = 0.1):
        super().__init__(teacher, optimizer, init_from, beta=float(beta))
        if self.hparams.beta <= 0:
            raise ValueError(f"DPO beta must be > 0, got {beta}")

    @property
    def needs_precomputed_reference(self) -> bool:
        return not self.uses_lora

    def reference_logprobs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(ref chosen [B], ref rejected [B]) from the batch, or the adapter-disabled model."""
        b = len(batch["pair_index"])
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if not self.uses_lora:
            raise RuntimeError("full fine-tune DPO needs the reference log-probs in the batch: call "
                               "precompute_reference_logprobs() and PreferenceDataset.set_reference() before fit")
        with torch.no_grad(), self.model.disable_adapter():
            logps = sequence_logprobs(self.model, batch)
        return logps[:b], logps[b:]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        b = len(batch["pair_index"])
        logps = sequence_logprobs(self.model, batch)  # chosen and rejected in one forward
        ref_chosen, ref_rejected = self.reference_logprobs(batch)
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:b], logps[b:], ref_chosen, ref_rejected,
                                                          beta=self.hparams.beta)
        self._check_finite(loss, batch_idx, "DPO")
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        stats = reward_statistics(chosen_rewards, rejected_rewards)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=b)
        self.log("train/reward_accuracy_epoch", stats["reward_accuracy"], on_step=False, on_epoch=True, batch_size=b)
        return loss


__all__ = ["TeacherSFTModule", "TeacherDPOModule", "save_teacher", "save_alias", "load_trained_teacher",
           "trainable_teacher", "read_model_record", "sequence_logprobs", "completion_window_logits",
           "precompute_reference_logprobs", "is_peft_model"]
