"""The teacher's answer tokens: where a reading looks in the vocabulary, and which tokens a span
of text covers. One check serves every reading: the grade after ``Label:`` (annotation, evaluation,
two-step answer extraction) and the answer after the judgement prompt's ``Answer:`` (llama.cpp
scoring).

- :func:`answer_token_ids`: the first token of each ``" <answer>"`` after a prefix, as tokenized
  inside ``"<prefix> <answer>"`` (so exactly what training on that text teaches), checked distinct;
- :func:`grade_token_ids`: the same after ``Label:`` for the grade names;
- :func:`token_spans`: the tokens of a text that overlap given character spans (a rationale's
  tokens, whose hidden states make a latent target).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lrkd.teacher.prompts import LABEL_PREFIX


def answer_token_ids(tokenizer, prefix: str, answers: Sequence[str], *, hint: str = ""
                     ) -> tuple[list[int], list[int]]:
    """(ids of ``prefix`` alone, the first token of each ``" <answer>"`` after it), in answer order.

    Raises ValueError when the tokenizer merges ``prefix`` with an answer (the answer position is
    undefined for it) or two answers start with the same token (the reading could not tell them
    apart); ``hint`` ends the latter message (what to rename)."""
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for answer in answers:
        full = tokenizer(f"{prefix} {answer}", add_special_tokens=False)["input_ids"]
        if full[:len(head)] != head or len(full) <= len(head):
            raise ValueError(f"the tokenizer merges {prefix!r} with {answer!r}: the answer position is "
                             f"undefined for it")
        ids.append(int(full[len(head)]))
    if len(set(ids)) != len(ids):
        clash = {tokenizer.convert_ids_to_tokens(i): [a for a, j in zip(answers, ids) if j == i]
                 for i in ids if ids.count(i) > 1}
        raise ValueError(f"answers must start with distinct tokens after {prefix!r}; these share one: "
                         f"{clash}.{hint}")
    return list(head), ids


def grade_token_ids(tokenizer, grade_names: Sequence[str]) -> list[int]:
    """The token that follows ``"Label:"`` for each grade, in grade order (:func:`answer_token_ids`
    after :data:`lrkd.teacher.prompts.LABEL_PREFIX`)."""
    return answer_token_ids(tokenizer, LABEL_PREFIX, grade_names,
                            hint=" Rename the grades (data.labels.names).")[1]


def token_spans(tokenizer, text: str, char_spans: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Indices of the tokens of ``text`` (tokenized alone, without special tokens, as
    :func:`lrkd.teacher.train.examples.encode_completions` does) that overlap each character span
    [start, end)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return [np.flatnonzero((offsets[:, 0] < b) & (offsets[:, 1] > a)) for a, b in char_spans]


__all__ = ["answer_token_ids", "grade_token_ids", "token_spans"]
