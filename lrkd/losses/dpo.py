"""Direct preference optimisation (DPO), the sigmoid loss, as a pure function of summed log-probs.

    L = -log σ( β · [ (log πθ(y_w|x) − log π_ref(y_w|x)) − (log πθ(y_l|x) − log π_ref(y_l|x)) ] )

y_w is the chosen completion, y_l the rejected one; each log π(y|x) is the sum of the completion
tokens' log-probabilities (:func:`lrkd.losses.lm.completion_logprobs`). The implicit rewards are
β · (log πθ − log π_ref) of each completion (as in TRL's ``DPOTrainer``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO loss over a batch of B preference pairs.

    All inputs are [B] summed completion log-probs (nats). Returns (loss: scalar mean over the
    pairs, chosen_rewards [B], rejected_rewards [B]); the rewards β·log-ratios are detached.
    """
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                        ref_rejected_logps)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"dpo_loss expects four [B] tensors of one shape, got shapes {sorted(shapes)}")
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    chosen_logratios = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_logratios = policy_rejected_logps.float() - ref_rejected_logps.float()
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def reward_statistics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Batch means of the implicit rewards: rewards_chosen, rewards_rejected, reward_margin
    (chosen − rejected) and reward_accuracy (share of pairs whose chosen reward is higher)."""
    return {"rewards_chosen": chosen_rewards.mean(), "rewards_rejected": rejected_rewards.mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean()}


__all__ = ["dpo_loss", "reward_statistics"]
