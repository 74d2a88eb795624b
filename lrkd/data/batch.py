"""The batch contract between the data module and the student module.

A training/eval batch is a ``dict[str, Tensor]`` with these keys (B = batch size, L = padded
length of the batch, C = classes, K = perspectives, D = latent target dim):

Always present
    input_ids        [B, L] long   standard view ``[CLS] query [SEP] item [SEP]``, padded per batch
    attention_mask   [B, L] long
    token_type_ids   [B, L] long   (zeros if the tokenizer has none)
    labels           [B]    long   gold class index, -1 where unlabelled
    relevance        [B]    float  raw numeric relevance, NaN where absent
    query_index      [B]    long   dense query index (for per-query ranking metrics)
    pair_index       [B]    long   row index of the pair in the full dataset

Present when a teacher artefact is attached (rows without an annotation are masked by ``annotated``)
    annotated        [B]       bool
    has_rationale    [B]       bool   annotated and carrying a rationale (the augmented view's rows)
    teacher_probs    [B, C]    float  soft labels p_T(y|x) (uniform where not annotated)
    latent_targets   [B, K, D] float  e_k (zeros where not annotated)

Present only when a loss term needs the reasoning-augmented view
    aug_input_ids, aug_attention_mask, aug_token_type_ids   [B, L+]
        ``[CLS] query [SEP] item [SEP] rationales [SEP]``
"""

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
AUG_PREFIX = "aug_"
AUG_INPUT_KEYS = tuple(AUG_PREFIX + k for k in INPUT_KEYS)


__all__ = ["INPUT_KEYS", "AUG_PREFIX", "AUG_INPUT_KEYS"]
