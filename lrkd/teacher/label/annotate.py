"""Annotation: the trained teacher labels the transfer pool and writes the artefact (lrkd.artefact).

Per pair, in batches:

1. greedy-generate the multi-perspective completion for the pair's prompt, and parse it into one
   rationale per perspective (:func:`lrkd.teacher.parse.parse_multi`; a missing section is "");
2. teacher-force the canonical completion up to the label, ``"<Title 1>: <r1>\\n...\\nLabel:"``
   (:func:`lrkd.teacher.prompts.format_multi_completion` cut after ``Label:``; for a well-formed
   generation this is the generated text itself, and it is written even when the generation never
   reached a label), and read at its last position:
   - the soft label p_T(y|x): softmax over the logits of each grade's first token
     (:func:`lrkd.teacher.tokens.grade_token_ids`); with ``calibrate``, divided by the same reading after the
     content-free completion (every rationale empty) and renormalised
     (:func:`contextual_calibration`), so that it reflects what the rationales add to the
     teacher's prior rather than the grade listed first;
   - with ``latent="hidden"``, the latent target e_k of perspective k: the mean of the teacher's
     last-layer hidden states over the tokens of rationale k (over its title's tokens when the
     rationale is empty). D = the teacher's hidden size.
3. with ``latent="sentence_encoder"``, e_k is instead a frozen sentence encoder's mean-pooled
   embedding of rationale k (:class:`SentenceEmbedder`, all-MiniLM-L6-v2 by default, D = 384).

Rows are written in shards through :class:`lrkd.artefact.ArtefactWriter`: a resumed run skips the
pairs of finished shards (``completed_keys()``) and continues with the next shard id, so a killed
annotation never redoes or loses a finished shard.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LogitsProcessorList

from lrkd.artefact import ArtefactWriter
from lrkd.data.encode import item_text
from lrkd.schema import text_fields
from lrkd.encoders import load_encoder, pool, resolve_model_path
from lrkd.teacher.train.examples import encode_completions, encode_prompts, left_pad
from lrkd.teacher.parse import parse_multi
from lrkd.teacher.prompts import LABEL_PREFIX, Perspective, format_multi_completion, one_line, render_multi_prompt
from lrkd.teacher.tokens import grade_token_ids, token_spans

log = logging.getLogger(__name__)

LATENT_SOURCES = ("hidden", "sentence_encoder")
DEFAULT_SENTENCE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


# -------------------------------------------------------------------------------- label prefix
def label_prefix(rationales: dict[str, str], perspectives: Sequence[Perspective], grade_names: Sequence[str]) -> str:
    """The canonical completion up to and including ``Label:`` (rationales "" where missing)."""
    text = format_multi_completion({p.name: rationales.get(p.name, "") for p in perspectives}, perspectives,
                                   str(grade_names[0]))
    return text[:text.rindex(LABEL_PREFIX) + len(LABEL_PREFIX)]


def rationale_char_spans(prefix: str, perspectives: Sequence[Perspective]) -> list[tuple[int, int]]:
    """Character span [start, end) of each perspective's rationale in a :func:`label_prefix` text
    (of its title when the rationale is empty)."""
    spans, start = [], 0
    lines = prefix.split("\n")
    for p, line in zip(perspectives, lines):
        head = f"{p.title}:"
        if not line.startswith(head):
            raise ValueError(f"line {line!r} does not start with the title of perspective {p.name!r}")
        body = start + len(head) + 1
        spans.append((body, start + len(line)) if start + len(line) > body else (start, start + len(p.title)))
        start += len(line) + 1
    return spans


# ----------------------------------------------------------------------------- sentence encoder
class SentenceEmbedder:
    """A frozen sentence encoder: texts -> mean-pooled last hidden states [n, D] float32."""

    def __init__(self, name_or_path: str = DEFAULT_SENTENCE_ENCODER, max_length: int = 256, batch_size: int = 64):
        self.model = load_encoder(name_or_path=name_or_path).eval()
        self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
        self.max_length, self.batch_size = int(max_length), int(batch_size)
        self.name = str(name_or_path)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(device)
            states = self.model(**enc).last_hidden_state
            out.append(pool(states, enc["attention_mask"], "mean").float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


# ------------------------------------------------------------------------------------ labelling
@dataclass
class LabelledBatch:
    """The teacher's output for B pairs. texts: the generated completions; rationales: B dicts
    perspective -> text ("" where the section is missing); labels: parsed grade or None; errors:
    parse error or None; soft_labels: [B, C] float32; hidden_latents: [B, K, H] float32 or None."""

    texts: list[str]
    rationales: list[dict[str, str]]
    labels: list[str | None]
    errors: list[str | None]
    soft_labels: np.ndarray
    hidden_latents: np.ndarray | None = None


def _device(model) -> torch.device:
    return next(model.parameters()).device


class CompletionNoRepeatNGram:
    """A ``transformers`` logits processor: no n-gram of the completion may occur twice in it.

    Unlike ``generate(no_repeat_ngram_size=n)``, which also counts the prompt's n-grams (and so
    forbids the completion's ``User intent:`` because the prompt names that section), only the
    tokens after the first ``start`` positions (the left-padded prompt width) count.
    input_ids [B, T] long; scores [B, V] float, the banned next tokens set to -inf."""

    def __init__(self, n: int, start: int):
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.start = int(n), int(start)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.n
        completions = input_ids[:, self.start:].tolist()
        for b, seq in enumerate(completions):
            if len(seq) < n - 1:
                continue
            head = seq[len(seq) - (n - 1):] if n > 1 else []
            banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == head]
            if banned:
                scores[b, banned] = float("-inf")
        return scores


@torch.no_grad()
def generate_completions(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                         no_repeat_ngram_size: int = 0) -> list[str]:
    """Greedy completions (decoded, special tokens dropped) of left-padded prompts.

    no_repeat_ngram_size: n > 0 forbids any n-gram of the completion to occur twice in it
    (:class:`CompletionNoRepeatNGram`); greedy decoding of a small teacher otherwise loops on one phrase."""
    batch = left_pad(prompt_ids, tokenizer.pad_token_id)
    device = _device(model)
    width = batch["input_ids"].shape[1]
    extra = ({"logits_processor": LogitsProcessorList([CompletionNoRepeatNGram(int(no_repeat_ngram_size), width)])}
             if int(no_repeat_ngram_size or 0) > 0 else {})
    out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         max_new_tokens=int(max_new_tokens), do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id, **extra)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


@torch.no_grad()
def score_label_position(model, prompt_ids: Sequence[Sequence[int]], prefix_ids: Sequence[Sequence[int]],
                         grade_ids: Sequence[int], pad_id: int, hidden: bool = False):
    """Teacher-force ``prompt + prefix`` (prefix ends with ``Label:``) and read the last position.

    Returns (soft labels [B, C] float32: softmax over the grade tokens' logits; last-layer hidden
    states [B, W, H] (left-padded, W = longest row) or None; W)."""
    batch = left_pad([list(p) + list(c) for p, c in zip(prompt_ids, prefix_ids)], pad_id)
    device = _device(model)
    out = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False, logits_to_keep=1,
                output_hidden_states=hidden)
    grade_logits = out.logits[:, -1, :].float()[:, torch.as_tensor(list(grade_ids), device=device)]
    probs = grade_logits.softmax(dim=-1).cpu().numpy().astype(np.float32)
    states = out.hidden_states[-1].float() if hidden else None
    return probs, states, batch["input_ids"].shape[1]


def contextual_calibration(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): ``probs / prior``, renormalised per row.

    probs, prior: [B, C] probabilities (a row of ``prior`` is the same prompt's reading with no
    content); returns [B, C] float32 rows that sum to 1. ``prior`` is clipped at 1e-12."""
    probs, prior = np.asarray(probs, np.float64), np.asarray(prior, np.float64)
    if probs.shape != prior.shape:
        raise ValueError(f"probs {probs.shape} and prior {prior.shape} must have the same shape")
    ratio = probs / np.clip(prior, 1e-12, None)
    return (ratio / ratio.sum(axis=1, keepdims=True)).astype(np.float32)


class GradeScorer:
    """Two-step answer extraction: the teacher's probabilities of the grades after a given
    completion prefix, for samples whose text has no parsable label (small teachers often never
    write the ``Label:`` line). ``scorer(prompts, rationales)`` teacher-forces each prompt followed
    by ``"<rationale>\\nLabel:"`` and returns [B, C] float32 probabilities (softmax over the grade
    tokens' logits at the label position, the same reading as the annotation's soft label).

    calibrate: divide by the same prompt's probabilities with an empty rationale and renormalise
    (contextual calibration, Zhao et al. 2021), so that the grade reflects what the rationale adds
    to the model's prior; a small base model puts ~95% on the first grade listed whatever it wrote.
    """

    def __init__(self, model, tokenizer, grade_names: Sequence[str], batch_size: int = 16, calibrate: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.grade_ids = grade_token_ids(tokenizer, grade_names)
        self.batch_size = max(1, int(batch_size))
        self.calibrate = bool(calibrate)

    def __call__(self, prompts: Sequence[str], rationales: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(rationales):
            raise ValueError(f"{len(prompts)} prompts but {len(rationales)} rationales")
        probs = self._score(prompts, [f"{str(r).strip()}\n{LABEL_PREFIX}" for r in rationales])
        if not self.calibrate or not len(probs):
            return probs
        unique = list(dict.fromkeys(prompts))
        prior = dict(zip(unique, self._score(unique, [LABEL_PREFIX] * len(unique))))
        return contextual_calibration(probs, np.stack([prior[p] for p in prompts]))

    @torch.no_grad()
    def _score(self, prompts: Sequence[str], prefixes: Sequence[str]) -> np.ndarray:
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.batch_size):
                prompt_ids = encode_prompts(self.tokenizer, list(prompts[start:start + self.batch_size]))
                prefix_ids = encode_completions(self.tokenizer, list(prefixes[start:start + self.batch_size]),
                                                add_eos=False)
                probs, _, _ = score_label_position(self.model, prompt_ids, prefix_ids, self.grade_ids,
                                                   self.tokenizer.pad_token_id)
                out.append(probs)
        finally:
            self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, len(self.grade_ids)), np.float32)


def label_pairs(model, tokenizer, prompts: Sequence[str], perspectives: Sequence[Perspective],
                grade_names: Sequence[str], max_new_tokens: int, hidden: bool = False,
                grade_ids: Sequence[int] | None = None, calibrate: bool = False,
                no_repeat_ngram_size: int = 0) -> LabelledBatch:
    """Generate, parse and score one batch of prompts (see the module docstring). calibrate: the
    soft labels are contextually calibrated by the content-free completion (all rationales empty)."""
    grade_ids = list(grade_ids) if grade_ids is not None else grade_token_ids(tokenizer, grade_names)
    prompt_ids = encode_prompts(tokenizer, prompts)
    texts = generate_completions(model, tokenizer, prompt_ids, max_new_tokens,
                                 no_repeat_ngram_size=no_repeat_ngram_size)
    parsed = [parse_multi(t, perspectives, grade_names) for t in texts]
    rationales = [{p.name: one_line(r.rationales.get(p.name, "")) for p in perspectives} for r in parsed]
    prefixes = [label_prefix(r, perspectives, grade_names) for r in rationales]
    prefix_ids = encode_completions(tokenizer, prefixes, add_eos=False)
    probs, states, width = score_label_position(model, prompt_ids, prefix_ids, grade_ids, tokenizer.pad_token_id,
                                                hidden=hidden)
    if calibrate:
        empty_ids = encode_completions(tokenizer, [label_prefix({}, perspectives, grade_names)], add_eos=False)
        prior, _, _ = score_label_position(model, prompt_ids, empty_ids * len(prompt_ids), grade_ids,
                                           tokenizer.pad_token_id)
        probs = contextual_calibration(probs, prior)
    latents = None
    if hidden:
        latents = np.zeros((len(prompts), len(perspectives), states.shape[-1]), np.float32)
        for i, prefix in enumerate(prefixes):
            start = width - len(prefix_ids[i])  # position of the prefix's first token in the padded row
            for k, tokens in enumerate(token_spans(tokenizer, prefix, rationale_char_spans(prefix, perspectives))):
                if len(tokens):
                    latents[i, k] = states[i, start + torch.as_tensor(tokens, device=states.device)].mean(dim=0).cpu().numpy()
    return LabelledBatch(texts, rationales, [r.label for r in parsed], [r.error for r in parsed], probs, latents)


def pair_prompts(tokenizer, frame: pd.DataFrame, rows: Sequence[int], perspectives: Sequence[Perspective],
                 grade_names: Sequence[str], max_item_words: int | None = None) -> list[str]:
    """The multi-perspective prompt of each dataset row in ``rows`` (item cut to ``max_item_words``)."""
    fields = text_fields(frame)
    records = frame.iloc[list(rows)].to_dict("records")
    return [render_multi_prompt(tokenizer, perspectives, str(r["query"]), item_text(r, fields), grade_names,
                                max_item_words) for r in records]


# ------------------------------------------------------------------------------------ annotating
@dataclass
class AnnotationStats:
    """What a run did: pairs written now and before (resumed), shards written, parse errors by code."""

    written: int = 0
    resumed: int = 0
    shards: int = 0
    parse_errors: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"written": self.written, "resumed": self.resumed, "shards": self.shards,
                "parse_errors": dict(self.parse_errors), "labels": dict(self.labels)}


def annotate_pool(model, tokenizer, frame: pd.DataFrame, rows: Sequence[int], perspectives: Sequence[Perspective],
                  grade_names: Sequence[str], writer: ArtefactWriter, *, batch_size: int = 8,
                  max_new_tokens: int = 256, latent: str = "hidden", embedder: SentenceEmbedder | None = None,
                  shard_size: int = 256, progress: bool = True, max_item_words: int | None = None,
                  calibrate: bool = False, no_repeat_ngram_size: int = 0) -> AnnotationStats:
    """Annotate the dataset rows ``rows`` of ``frame`` into ``writer``'s artefact, shard by shard,
    skipping the pairs it already holds. Does not finalize the artefact (the caller does).
    calibrate, no_repeat_ngram_size: see :func:`label_pairs` and :func:`generate_completions`."""
    if latent not in LATENT_SOURCES:
        raise ValueError(f"latent must be one of {LATENT_SOURCES}, got {latent!r}")
    if latent == "sentence_encoder" and embedder is None:
        raise ValueError("latent='sentence_encoder' needs an embedder (SentenceEmbedder)")
    if int(shard_size) < 1 or int(batch_size) < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    rows = np.asarray(rows, dtype=np.int64)
    keys = list(zip(frame["query_id"].astype(str).to_numpy()[rows], frame["item_id"].astype(str).to_numpy()[rows]))
    done = writer.completed_keys()
    pending = np.array([r for r, key in zip(rows, keys) if key not in done], dtype=np.int64)
    stats = AnnotationStats(resumed=len(rows) - len(pending))
    next_shard = max(writer.completed_shards(), default=-1) + 1
    grade_ids = grade_token_ids(tokenizer, grade_names)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), initial=stats.resumed, desc="annotate", unit="pair", disable=not progress)
    try:
        for start in range(0, len(pending), int(shard_size)):
            shard_rows = pending[start:start + int(shard_size)]
            rationales: dict[str, list[str]] = {p.name: [] for p in perspectives}
            soft, latents = [], []
            for b in range(0, len(shard_rows), int(batch_size)):
                batch_rows = shard_rows[b:b + int(batch_size)]
                prompts = pair_prompts(tokenizer, frame, batch_rows, perspectives, grade_names, max_item_words)
                out = label_pairs(model, tokenizer, prompts, perspectives, grade_names, max_new_tokens,
                                  hidden=latent == "hidden", grade_ids=grade_ids, calibrate=calibrate,
                                  no_repeat_ngram_size=no_repeat_ngram_size)
                for r in out.rationales:
                    for p in perspectives:
                        rationales[p.name].append(r[p.name])
                soft.append(out.soft_labels)
                if latent == "hidden":
                    latents.append(out.hidden_latents)
                else:
                    texts = [r[p.name] for r in out.rationales for p in perspectives]
                    latents.append(embedder(texts).reshape(len(batch_rows), len(perspectives), -1))
                for error in out.errors:
                    if error is not None:
                        stats.parse_errors[error] = stats.parse_errors.get(error, 0) + 1
                for label in out.labels:
                    stats.labels[str(label)] = stats.labels.get(str(label), 0) + 1
                bar.update(len(batch_rows))
            sub = frame.iloc[shard_rows]
            writer.write_shard(next_shard, sub["query_id"].astype(str).tolist(), sub["item_id"].astype(str).tolist(),
                               rationales, np.concatenate(soft), np.concatenate(latents))
            next_shard += 1
            stats.shards += 1
            stats.written += len(shard_rows)
    finally:
        bar.close()
        model.train(was_training)
    return stats


__all__ = ["contextual_calibration", "CompletionNoRepeatNGram", "GradeScorer", "label_prefix",
           "rationale_char_spans", "SentenceEmbedder", "LabelledBatch", "generate_completions", "score_label_position", "label_pairs", "pair_prompts", "AnnotationStats",
           "annotate_pool", "LATENT_SOURCES", "DEFAULT_SENTENCE_ENCODER"]
