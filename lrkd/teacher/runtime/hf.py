"""A Hugging Face causal LM in this process as a :class:`~lrkd.teacher.runtime.base.GenerationBackend`:
batched ``generate`` with left padding, seeded per batch so that the same inputs give the same samples."""
from __future__ import annotations

from typing import Mapping

import torch
from tqdm.auto import tqdm

from lrkd.teacher.prompts import prompt_add_special_tokens
from lrkd.teacher.runtime.base import GenerationBackend, derive_seed


class LocalHFBackend(GenerationBackend):
    """Batched sampling from a local causal LM.

    model, tokenizer: from :func:`lrkd.teacher.model.load_teacher` (left padding, a pad token).
    batch_size: sequences per ``generate`` call (prompts per call = max(1, batch_size // n)).
    generate_kwargs: further ``generate`` arguments (top_p, top_k, repetition_penalty, ...).
    Batch b of a call is sampled under ``derive_seed(seed, b)`` (the global RNG is left untouched).
    With ``temperature <= 0`` decoding is greedy: one sequence per prompt, repeated n times.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, progress: bool = True,
                 generate_kwargs: Mapping | None = None):
        if tokenizer.padding_side != "left":
            raise ValueError("LocalHFBackend needs a left-padding tokenizer (load_teacher sets it)")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.generate_kwargs = dict(generate_kwargs or {})
        self.add_special_tokens = prompt_add_special_tokens(tokenizer)

    def generate(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
                 seed: int) -> list[list[str]]:
        sample = float(temperature) > 0
        per_prompt = int(n) if sample else 1
        step = max(1, self.batch_size // per_prompt)
        starts = range(0, len(prompts), step)
        device = next(self.model.parameters()).device
        kwargs = dict(self.generate_kwargs, do_sample=sample, num_return_sequences=per_prompt,
                      max_new_tokens=int(max_new_tokens), pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            kwargs["temperature"] = float(temperature)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out: list[list[str]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for b, start in enumerate(tqdm(starts, desc="generate", unit="batch", leave=False,
                                           disable=not self.progress or len(starts) < 2)):
                chunk = prompts[start:start + step]
                enc = self.tokenizer(chunk, return_tensors="pt", padding=True, return_token_type_ids=False,
                                     add_special_tokens=self.add_special_tokens).to(device)
                with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.inference_mode():
                    torch.manual_seed(derive_seed(seed, b))
                    ids = self.model.generate(**enc, **kwargs)
                texts = self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for i in range(len(chunk)):
                    got = texts[i * per_prompt:(i + 1) * per_prompt]
                    out.append(got if sample else got * int(n))
        finally:
            self.model.train(was_training)
        return out


__all__ = ["LocalHFBackend"]
