"""Causal-LM losses over the completion part of prompt + completion sequences.

Conventions (B = batch, L = sequence length, V = vocabulary):
    logits          [B, L, V]  the causal LM's output; ``logits[:, t]`` predicts ``input_ids[:, t + 1]``
    input_ids       [B, L]     long, prompt tokens then completion tokens (then padding)
    completion_mask [B, L]     1 where the token at that position is a completion token (it is a
                               target), 0 for prompt tokens and padding

Only completion tokens are scored: the prompt is context, never a target (METHOD.md, SFT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> None:
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2] or completion_mask.shape != input_ids.shape:
        raise ValueError(f"expected logits [B, L, V], input_ids [B, L] and completion_mask [B, L]; got "
                         f"{tuple(logits.shape)}, {tuple(input_ids.shape)}, {tuple(completion_mask.shape)}")
    if input_ids.shape[1] < 2:
        raise ValueError("sequences need >= 2 tokens (a context token and a target)")


def completion_token_logprobs(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-target log-probabilities, shifted: (logp [B, L-1] float32, mask [B, L-1] bool).

    ``logp[b, t] = log softmax(logits[b, t])[input_ids[b, t + 1]]`` where ``mask[b, t]`` (the target
    ``t + 1`` is a completion token), 0 elsewhere.
    """
    _check(logits, input_ids, completion_mask)
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].bool()
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~mask, 0.0), mask


def completion_logprobs(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """log π(y|x): the sum of the completion tokens' log-probabilities, [B] float32 (nats)."""
    logp, _ = completion_token_logprobs(logits, input_ids, completion_mask)
    return logp.sum(dim=-1)


def completion_nll(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """The SFT loss: mean next-token negative log-likelihood over all completion tokens of the
    batch (each token weighs the same, whatever its sequence's length). Scalar (nats/token)."""
    _check(logits, input_ids, completion_mask)
    targets = input_ids[:, 1:].masked_fill(~completion_mask[:, 1:].bool(), -100)
    if not bool((targets != -100).any()):
        raise ValueError("completion_nll: the batch has no completion token to score")
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)


__all__ = ["completion_token_logprobs", "completion_logprobs", "completion_nll"]
