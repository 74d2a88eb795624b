"""Training data of the teacher, built from the MPCoT generations: SFT examples and DPO pairs,
tokenized into prompt + completion sequences (cached), served as batches.

From the generations frame (:func:`lrkd.teacher.train.generate.read_generations`, one row per pair,
perspective and sample) and the schema dataset:

- SFT example, for each pair whose every perspective has >= 1 correct rationale (its label equals
  the gold label): prompt = the multi-perspective prompt, completion = the first correct rationale
  (lowest sample index) of each perspective, then the gold label.
- DPO pair, for each such pair and each *conflict sample* (a parsed rationale of some perspective
  whose label is a wrong grade): chosen = the SFT completion; rejected = the same completion with
  that perspective's rationale replaced by the wrong one and the final label = the wrong label.

A tokenized sequence is ``prompt tokens + completion tokens + eos``; the completion mask is 1 on the
completion tokens and the eos (the targets), 0 on the prompt. Batches are LEFT-padded (the
completions end at the last position, so a forward can compute logits for the completion window
only) and carry ``position_ids`` that skip the padding.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lrkd.schema import UNLABELLED, DataError, text_fields
from lrkd.data.encode import item_text
from lrkd.data.tokenize import TokenizedView, cache_key, cache_path
from lrkd.teacher.prompts import (Perspective, clip_words, format_multi_completion, prompt_add_special_tokens,
                                  render_multi_prompt)

log = logging.getLogger(__name__)

GENERATION_COLUMNS = ("query_id", "item_id", "perspective", "sample", "rationale", "label", "parse_error", "correct")
PROMPT_SEGMENT, COMPLETION_SEGMENT = 0, 1
TEACHER_TOKENIZE_VERSION = 1

PairKey = tuple[str, str]


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: the multi-perspective prompt and its target completion."""

    query_id: str
    item_id: str
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair for a prompt: chosen (all rationales correct, gold label) and rejected (the
    rationale of ``perspective`` replaced by its wrong sample number ``sample``, label ``wrong_label``)."""

    query_id: str
    item_id: str
    perspective: str
    sample: int
    wrong_label: str
    prompt: str
    chosen: str
    rejected: str


# --------------------------------------------------------------------------------------- building
def _check_generations(generations: pd.DataFrame) -> None:
    missing = [c for c in GENERATION_COLUMNS if c not in generations.columns]
    if missing:
        raise DataError(f"the generations frame lacks the column(s) {missing} (expected "
                        f"{list(GENERATION_COLUMNS)}, as written by the teacher_generate stage)",
                        column=missing[0])


@dataclass(frozen=True)
class _PairText:
    query: str
    item: str
    gold: str | None


def _pair_texts(frame: pd.DataFrame, grade_names: Sequence[str],
                max_item_words: int | None = None) -> dict[PairKey, _PairText]:
    """(query_id, item_id) -> query, item text (cut to ``max_item_words`` words) and gold grade name
    (None when unlabelled)."""
    fields = text_fields(frame)
    out: dict[PairKey, _PairText] = {}
    for row in frame.to_dict("records"):
        label = int(row["label"])
        gold = None if label == UNLABELLED else str(grade_names[label])
        out[(str(row["query_id"]), str(row["item_id"]))] = _PairText(str(row["query"]),
                                                                        clip_words(item_text(row, fields), max_item_words), gold)
    return out


def _in_perspective_order(rows: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Rows sorted by pair, then perspective in config order, then sample index."""
    order = rows["perspective"].map({n: i for i, n in enumerate(names)})
    return (rows.assign(_order=order).sort_values(["query_id", "item_id", "_order", "sample"], kind="stable")
            .drop(columns="_order"))


def correct_rationale_sets(generations: pd.DataFrame, perspectives: Sequence[Perspective]) -> dict[PairKey, dict[str, str]]:
    """Pairs whose every perspective has a correct, non-empty rationale -> {perspective: the first
    such rationale (lowest sample index)}; in sorted pair order."""
    _check_generations(generations)
    names = [p.name for p in perspectives]
    ok = generations[generations["correct"].fillna(False).astype(bool)
                     & generations["perspective"].isin(names)
                     & generations["rationale"].fillna("").astype(str).str.strip().ne("")]
    ok = _in_perspective_order(ok, names)
    first = ok.drop_duplicates(["query_id", "item_id", "perspective"], keep="first")
    sets: dict[PairKey, dict[str, str]] = {}
    for (qid, iid), group in first.groupby(["query_id", "item_id"], sort=True):
        found = dict(zip(group["perspective"], group["rationale"].astype(str)))
        if all(n in found for n in names):
            sets[(str(qid), str(iid))] = {n: found[n] for n in names}
    return sets


def _lookup(texts: Mapping[PairKey, _PairText], key: PairKey) -> _PairText:
    if key not in texts:
        raise DataError(f"the generations hold the pair (query_id={key[0]!r}, item_id={key[1]!r}), which is "
                        f"not in the dataset: the generations belong to another dataset; re-run teacher_generate",
                        column="query_id")
    return texts[key]


def sft_examples(generations: pd.DataFrame, frame: pd.DataFrame, perspectives: Sequence[Perspective],
                 grade_names: Sequence[str], tokenizer, max_item_words: int | None = None) -> list[SFTExample]:
    """The SFT examples (see the module docstring), in sorted pair order; prompts cut the item text
    to ``max_item_words`` words (as generation and annotation do)."""
    texts = _pair_texts(frame, grade_names, max_item_words)
    out = []
    for key, rationales in correct_rationale_sets(generations, perspectives).items():
        pair = _lookup(texts, key)
        if pair.gold is None:
            continue
        prompt = render_multi_prompt(tokenizer, perspectives, pair.query, pair.item, grade_names)
        out.append(SFTExample(key[0], key[1], prompt, format_multi_completion(rationales, perspectives, pair.gold)))
    return out


def preference_pairs(generations: pd.DataFrame, frame: pd.DataFrame, perspectives: Sequence[Perspective],
                     grade_names: Sequence[str], tokenizer, max_pairs: int | None = None,
                     max_item_words: int | None = None) -> list[PreferencePair]:
    """The DPO pairs from conflict samples (see the module docstring).

    Identical rejected texts of one prompt are kept once. Order: every prompt's first conflict, then
    every prompt's second, ... (pairs sorted within each round), so that ``max_pairs`` keeps as many
    distinct prompts as it can.
    """
    texts = _pair_texts(frame, grade_names, max_item_words)
    correct = correct_rationale_sets(generations, perspectives)
    names = {p.name for p in perspectives}
    grades = {str(g) for g in grade_names}
    wrong = generations[~generations["correct"].fillna(False).astype(bool)
                        & generations["label"].isin(grades)
                        & generations["perspective"].isin(names)
                        & generations["rationale"].fillna("").astype(str).str.strip().ne("")]
    wrong = _in_perspective_order(wrong, [p.name for p in perspectives])
    ranked: list[tuple[int, PairKey, PreferencePair]] = []
    seen: set[tuple[PairKey, str]] = set()
    rank: dict[PairKey, int] = {}
    prompts: dict[PairKey, str] = {}
    for row in wrong.itertuples(index=False):
        key = (str(row.query_id), str(row.item_id))
        if key not in correct:
            continue
        pair = _lookup(texts, key)
        if pair.gold is None or row.label == pair.gold:
            continue
        chosen = format_multi_completion(correct[key], perspectives, pair.gold)
        rejected = format_multi_completion({**correct[key], row.perspective: str(row.rationale)}, perspectives,
                                           str(row.label))
        if (key, rejected) in seen:
            continue
        seen.add((key, rejected))
        if key not in prompts:
            prompts[key] = render_multi_prompt(tokenizer, perspectives, pair.query, pair.item, grade_names)
        r = rank.get(key, 0)
        rank[key] = r + 1
        ranked.append((r, key, PreferencePair(key[0], key[1], str(row.perspective), int(row.sample), str(row.label),
                                              prompts[key], chosen, rejected)))
    ranked.sort(key=lambda t: (t[0], t[1]))
    out = [p for _, _, p in ranked]
    return out[:max_pairs] if max_pairs is not None else out


# ------------------------------------------------------------------------------------ tokenizing
def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts (special tokens added only for plain-text prompts)."""
    if not prompts:
        return []
    return tokenizer(list(prompts), add_special_tokens=prompt_add_special_tokens(tokenizer),
                     return_attention_mask=False)["input_ids"]


def encode_completions(tokenizer, completions: Sequence[str], add_eos: bool = True) -> list[list[int]]:
    """Token ids of completions (no special tokens), each followed by eos when ``add_eos``."""
    if not completions:
        return []
    ids = tokenizer(list(completions), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [list(x) + ([int(eos)] if add_eos and eos is not None else []) for x in ids]


def _content_hash(prompts: Sequence[str], completions: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in (*prompts, "\x00", *completions):
        h.update(text.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def tokenize_prompt_completions(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                                cache_dir: str | os.PathLike) -> TokenizedView:
    """``prompt + completion + eos`` token ids per example, cached under ``<cache_dir>/tokens/``.

    The view's ``token_type_ids`` hold the segment: 0 = prompt, 1 = completion (the completion mask).
    Sequences are stored whole; :func:`fits` drops those over a length budget (so the budget is not
    part of the cache key). The key hashes the texts, the tokenizer and the layout version.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    key = cache_key(_content_hash(prompts, completions), tokenizer, "teacher_prompt_completion", 0,
                    version=TEACHER_TOKENIZE_VERSION, add_special=prompt_add_special_tokens(tokenizer))
    path = cache_path(cache_dir, key)
    if path.exists():
        try:
            return TokenizedView.load(path, key)
        except Exception as err:  # a truncated or foreign file: rebuild it
            log.warning("unreadable token cache entry %s (%s); re-tokenizing", path, err)
    p_ids, c_ids = encode_prompts(tokenizer, prompts), encode_completions(tokenizer, completions)
    view = TokenizedView.from_lists([p + c for p, c in zip(p_ids, c_ids)],
                                    [[PROMPT_SEGMENT] * len(p) + [COMPLETION_SEGMENT] * len(c)
                                     for p, c in zip(p_ids, c_ids)])
    view.save(path, key)
    return view


def fits(view: TokenizedView, max_length: int) -> np.ndarray:
    """[N] bool: sequences of at most ``max_length`` tokens."""
    return view.lengths <= int(max_length)


# ------------------------------------------------------------------------------ datasets, batches
class CompletionDataset(Dataset):
    """SFT sequences: item j = sequence ``indices[j]`` of ``view`` as
    {"input_ids" [L] int, "completion_mask" [L] int}."""

    def __init__(self, view: TokenizedView, indices: Sequence[int] | None = None):
        self.view = view
        self.indices = np.arange(len(view)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        ids, segments = self.view[int(self.indices[j])]
        return {"input_ids": ids, "completion_mask": segments}


class PreferenceDataset(Dataset):
    """DPO pairs: item j = pair ``indices[j]`` as {"chosen_input_ids", "chosen_completion_mask",
    "rejected_input_ids", "rejected_completion_mask", "pair_index"} and, once set with
    :meth:`set_reference`, "ref_chosen_logps" and "ref_rejected_logps" (floats)."""

    def __init__(self, chosen: TokenizedView, rejected: TokenizedView, indices: Sequence[int] | None = None):
        if len(chosen) != len(rejected):
            raise ValueError(f"{len(chosen)} chosen sequences for {len(rejected)} rejected ones")
        self.chosen, self.rejected = chosen, rejected
        self.indices = np.arange(len(chosen)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.reference: tuple[np.ndarray, np.ndarray] | None = None

    def set_reference(self, chosen_logps: np.ndarray, rejected_logps: np.ndarray) -> None:
        """Reference log-probs per item of this dataset ([len(self)] each, item order)."""
        chosen_logps, rejected_logps = np.asarray(chosen_logps, np.float32), np.asarray(rejected_logps, np.float32)
        if chosen_logps.shape != (len(self),) or rejected_logps.shape != (len(self),):
            raise ValueError(f"reference log-probs must be [{len(self)}] each, got {chosen_logps.shape} "
                             f"and {rejected_logps.shape}")
        self.reference = (chosen_logps, rejected_logps)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = int(self.indices[j])
        c_ids, c_mask = self.chosen[i]
        r_ids, r_mask = self.rejected[i]
        item = {"chosen_input_ids": c_ids, "chosen_completion_mask": c_mask, "rejected_input_ids": r_ids,
                "rejected_completion_mask": r_mask, "pair_index": j}
        if self.reference is not None:
            item["ref_chosen_logps"] = float(self.reference[0][j])
            item["ref_rejected_logps"] = float(self.reference[1][j])
        return item


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad int sequences to the longest: {"input_ids" [B, L], "attention_mask" [B, L],
    "position_ids" [B, L] (0 at each sequence's first real token, 0 on the padding)}."""
    width = max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), width), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = np.asarray(s, dtype=np.int64)
            mask[i, width - len(s):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "position_ids": torch.from_numpy(positions)}


def _sequences_batch(ids: Sequence[np.ndarray], segments: Sequence[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    batch = left_pad(ids, pad_id)
    batch["completion_mask"] = left_pad(segments, 0)["input_ids"]
    return batch


class CompletionCollator:
    """CompletionDataset items -> {input_ids, attention_mask, position_ids, completion_mask} [B, L]."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return _sequences_batch([it["input_ids"] for it in items], [it["completion_mask"] for it in items], self.pad_id)


class PreferenceCollator:
    """PreferenceDataset items -> one batch of 2B sequences, the B chosen rows first, then the B
    rejected rows in the same pair order: {input_ids, attention_mask, position_ids,
    completion_mask} [2B, L], pair_index [B], and ref_chosen_logps / ref_rejected_logps [B] when the
    dataset has reference log-probs."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [it["chosen_input_ids"] for it in items] + [it["rejected_input_ids"] for it in items]
        masks = [it["chosen_completion_mask"] for it in items] + [it["rejected_completion_mask"] for it in items]
        batch = _sequences_batch(ids, masks, self.pad_id)
        batch["pair_index"] = torch.tensor([it["pair_index"] for it in items], dtype=torch.long)
        if items and "ref_chosen_logps" in items[0]:
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                batch[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
        return batch


def write_examples_jsonl(path: str | os.PathLike, examples: Sequence[Any]) -> None:
    """The built examples or pairs as JSON lines (for inspection next to a stage's outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")


__all__ = ["SFTExample", "PreferencePair", "correct_rationale_sets", "sft_examples", "preference_pairs",
           "encode_prompts", "encode_completions", "tokenize_prompt_completions", "fits", "CompletionDataset",
           "PreferenceDataset", "left_pad", "CompletionCollator", "PreferenceCollator", "write_examples_jsonl"]
