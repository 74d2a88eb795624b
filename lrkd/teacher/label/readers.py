"""What the llama.cpp teacher reads of one pair: the readers, one-sequence calls and request programs.

- :class:`JudgementReader`: the direct judgement prompt (:func:`lrkd.teacher.prompts.render_judge_prompt`:
  the instruction, then the query and the product), then ``"Answer:"`` teacher-forced after the
  assistant's turn starts. At that position: the softmax over the answer tokens' logits (``" yes"``,
  ``" no"``) -> [2], which :mod:`lrkd.teacher.label.calibration` maps to a soft label over the
  grades; and the last-layer hidden state (the teacher's decision state) -> the latent target [1, D].
  On chorus_icecat this reading ranks pairs at val AUC 0.86 (60 pairs) where the grade tokens read
  after the multi-perspective prompt with no rationale were at chance (0.52), and a graded direct
  prompt reached 0.79 (README, "The llama.cpp teacher").
- :class:`RationaleReader`: multi-perspective chain of thought generated, parsed and read back.
- :class:`PerspectiveVerdictReader`: each perspective's own verdict, read after its rationale alone.
- :class:`lrkd.teacher.label.panel.PanelReader`: several questions per pair.

A prompt is cut into segments that stay in the KV cache: the instruction shared by every pair is
decoded once, then the pair's own part, then the continuation. Each reader is a callable on a
one-sequence :class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime` and a request program for
:class:`lrkd.teacher.runtime.batched.BatchedDecoder` (many pairs in one context): the same
reading, equal up to the kernels' batch-shape rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from transformers import AutoTokenizer

from lrkd.data.encode import item_text
from lrkd.schema import text_fields
from lrkd.teacher.label.annotate import label_prefix, rationale_char_spans
from lrkd.teacher.parse import parse_multi
from lrkd.teacher.prompts import (Perspective, one_line, prompt_add_special_tokens, render_judge_prompt,
                                  render_multi_prompt)
from lrkd.teacher.runtime.batched import Feed, Prefix, Rewind, generation
from lrkd.teacher.tokens import grade_token_ids, token_spans

QUERY_MARK = "Query: "


@dataclass
class PairPrompt:
    """One pair's prompt as token segments: ``shared`` (the same for every pair) and ``pair``."""

    query_id: str
    item_id: str
    shared: list[int]
    pair: list[int]


def split_prompt(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """A rendered multi-perspective prompt -> (shared ids, pair ids): cut before its ``Query:`` line,
    each side tokenized alone (special tokens written by the chat template are parsed as such)."""
    cut = prompt.index("\n" + QUERY_MARK) + 1
    head = tokenizer(prompt[:cut], add_special_tokens=prompt_add_special_tokens(tokenizer))["input_ids"]
    tail = tokenizer(prompt[cut:], add_special_tokens=False)["input_ids"]
    return list(head), list(tail)


def read_pair(runtime, shared: Sequence[int], pair: Sequence[int], prefix_ids: Sequence[int],
              answer_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(answer probabilities [A] float32, decision state [1, D] float32) of one pair: softmax over
    the answer tokens' logits, and the last hidden state, after ``shared + pair + prefix``."""
    reading = runtime.read([shared, pair], prefix_ids, hidden=True, logit_ids=answer_ids)
    return softmax(reading.logits), reading.hidden[-1:].astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    """float32 softmax of a 1-d array of logits (computed in float64)."""
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z - z.max())
    return (p / p.sum()).astype(np.float32)


class JudgementReader:
    """Reads one pair with the judgement prompt: ``(answer probabilities [A], decision state
    [1, D], {})`` (:func:`read_pair`). Picklable: sent to the worker processes."""

    kind = "judgement"

    def __init__(self, prefix_ids: Sequence[int], answer_ids: Sequence[int]):
        self.prefix_ids, self.answer_ids = list(prefix_ids), list(answer_ids)

    def __call__(self, runtime, prompt: "PairPrompt") -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        probs, state = read_pair(runtime, prompt.shared, prompt.pair, self.prefix_ids, self.answer_ids)
        return probs, state, {}

    def program(self, prompt: "PairPrompt", limits: "SequenceLimits"):
        """The same reading as a :class:`lrkd.teacher.runtime.batched.BatchedDecoder` request: the pair, then
        the answer prefix, each fed whole as :func:`read_pair` decodes them."""
        yield Prefix(tuple(prompt.shared))
        yield Feed(prompt.pair, "none")
        result = yield Feed(self.prefix_ids, "last", logit_ids=self.answer_ids, hidden=True)
        return softmax(result.logits), result.hidden[-1:].astype(np.float32), {}


class TokenizerReader:
    """A reader that tokenizes in the worker: the tokenizer is loaded from ``tokenizer_dir`` on first
    use and never pickled (the readers are sent to worker processes)."""

    def __init__(self, tokenizer_dir: str):
        self.tokenizer_dir = str(tokenizer_dir)
        self._tokenizer = None

    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        return self._tokenizer


class RationaleReader(TokenizerReader):
    """Multi-perspective chain of thought for one pair (the annotation of
    :mod:`lrkd.teacher.label.annotate`, on llama.cpp): greedy generation after the multi-perspective prompt
    (completion-only n-gram block), parsed into one rationale per perspective
    (:func:`lrkd.teacher.parse.parse_multi`); then the canonical completion up to ``Label:`` is
    teacher-forced and read: the softmax over the grade tokens [C] and, per perspective, the mean
    last-layer state over its rationale's tokens [K, D]. Returns ``(soft [C], latents [K, D],
    rationales)``. The tokenizer is loaded from ``tokenizer_dir`` in the worker."""

    kind = "rationale"

    def __init__(self, tokenizer_dir: str, perspectives: Sequence, grade_names: Sequence[str], max_new_tokens: int,
                 no_repeat_ngram_size: int = 3):
        super().__init__(tokenizer_dir)
        self.perspectives = [(p.name, p.title, p.instruction) for p in perspectives]
        self.grade_names = list(grade_names)
        self.max_new_tokens, self.no_repeat_ngram_size = int(max_new_tokens), int(no_repeat_ngram_size)

    def _canonical(self, ids: Sequence[int]) -> tuple[dict[str, str], str, list[int]]:
        """(rationale per perspective, the canonical completion up to ``Label:``, its token ids)."""
        tok = self.tokenizer()
        perspectives = [Perspective(*p) for p in self.perspectives]
        parsed = parse_multi(tok.decode(ids, skip_special_tokens=True), perspectives, self.grade_names)
        rationales = {p.name: one_line(parsed.rationales.get(p.name, "")) for p in perspectives}
        prefix = label_prefix(rationales, perspectives, self.grade_names)
        return rationales, prefix, tok(prefix, add_special_tokens=False)["input_ids"]

    def _readout(self, prefix: str, grade_logits: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(soft label [C], per-perspective mean state over its rationale's tokens [K, D])."""
        tok = self.tokenizer()
        perspectives = [Perspective(*p) for p in self.perspectives]
        spans = token_spans(tok, prefix, rationale_char_spans(prefix, perspectives))
        latents = np.stack([hidden[t].mean(axis=0) if len(t) else np.zeros(hidden.shape[1]) for t in spans])
        return softmax(grade_logits), latents.astype(np.float32)

    def grade_ids(self) -> list[int]:
        return list(grade_token_ids(self.tokenizer(), self.grade_names))

    def __call__(self, runtime, prompt: "PairPrompt") -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        ids = runtime.generate([prompt.shared], prompt.pair, self.max_new_tokens,
                               no_repeat_ngram_size=self.no_repeat_ngram_size)
        rationales, prefix, prefix_ids = self._canonical(ids)
        reading = runtime.read([prompt.shared, prompt.pair], prefix_ids, hidden=True, logit_ids=self.grade_ids())
        soft, latents = self._readout(prefix, reading.logits, reading.hidden)
        return soft, latents, rationales

    def program(self, prompt: "PairPrompt", limits: "SequenceLimits"):
        """The same annotation as a :class:`lrkd.teacher.runtime.batched.BatchedDecoder` request: generate
        after the pair, then rewind to the pair's end and read the canonical completion."""
        yield Prefix(tuple(prompt.shared))
        first = yield Feed(prompt.pair, "last")
        ids = yield from generation(first, self.max_new_tokens, limits.is_end, ctx_limit=limits.n_ctx,
                                    no_repeat_ngram_size=self.no_repeat_ngram_size)
        rationales, prefix, prefix_ids = self._canonical(ids)
        yield Rewind(len(prompt.shared) + len(prompt.pair))
        reading = yield Feed(prefix_ids, "all", logit_ids=self.grade_ids(), hidden=True)
        soft, latents = self._readout(prefix, reading.logits, reading.hidden)
        return soft, latents, rationales


class PerspectiveVerdictReader(TokenizerReader):
    """Each perspective's own verdict (the per-perspective diagnostics of the LRKD paper), for pairs
    that already have rationales (:class:`RationaleReader`'s reads), read the way the teacher reads
    best: the judgement prompt of :class:`JudgementReader`, whose assistant turn is teacher-forced as
    ``"<title_k>: <rationale_k>\n<answer prefix>"``; the softmax over the answer tokens there -> [A].
    The same with every perspective's rationale, one per line, gives the final verdict. Nothing is
    generated: a pair costs its prompt and K + 1 short feeds.

    Returns ``(final [A], verdicts [K, A], rationales)``; a perspective whose rationale is empty gets a
    uniform row (the diagnostics leave it out: ``rationales[k] == ""``) and is left out of the final
    text. ``given``: (query_id, item_id) -> {perspective: rationale}."""

    kind = "perspective_verdicts"

    def __init__(self, tokenizer_dir: str, perspectives: Sequence, answer_prefix: str, answer_ids: Sequence[int],
                 given: dict):
        super().__init__(tokenizer_dir)
        self.perspectives = [(p.name, p.title) for p in perspectives]
        self.answer_prefix, self.answer_ids = str(answer_prefix), list(answer_ids)
        self.given = {tuple(map(str, k)): dict(v) for k, v in given.items()}

    def texts(self, prompt: "PairPrompt") -> tuple[dict[str, str], list[str | None]]:
        """(rationales, the K + 1 assistant texts to teacher-force: one per perspective, None when its
        rationale is empty, then all of them)."""
        rationales = self.given[(str(prompt.query_id), str(prompt.item_id))]
        lines = [f"{title}: {rationales[name]}" if rationales.get(name, "").strip() else None
                 for name, title in self.perspectives]
        one = [None if line is None else f"{line}\n{self.answer_prefix}" for line in lines]
        return rationales, one + ["\n".join(x for x in lines if x is not None) + f"\n{self.answer_prefix}"]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer()(text, add_special_tokens=False)["input_ids"]

    def _finish(self, rationales, readings) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        uniform = np.full(len(self.answer_ids), 1 / len(self.answer_ids), dtype=np.float32)
        rows = [uniform if r is None else softmax(r) for r in readings]
        return rows[-1], np.stack(rows[:-1]), rationales

    def __call__(self, runtime, prompt: "PairPrompt") -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        rationales, texts = self.texts(prompt)
        readings = [None if t is None else
                    runtime.read([prompt.shared, prompt.pair], self._ids(t), logit_ids=self.answer_ids).logits
                    for t in texts]
        return self._finish(rationales, readings)

    def program(self, prompt: "PairPrompt", limits: "SequenceLimits"):
        """The same reading as a :class:`lrkd.teacher.runtime.batched.BatchedDecoder` request: the pair
        once, then per text a rewind to the pair's end and the text."""
        rationales, texts = self.texts(prompt)
        yield Prefix(tuple(prompt.shared))
        yield Feed(prompt.pair, "none")
        readings = []
        for text in texts:
            if text is None:
                readings.append(None)
                continue
            yield Rewind(len(prompt.shared) + len(prompt.pair))
            result = yield Feed(self._ids(text), "last", logit_ids=self.answer_ids)
            readings.append(result.logits)
        return self._finish(rationales, readings)


@dataclass
class SequenceLimits:
    """What a reader's program needs of the context: n_ctx tokens per sequence, the end test."""

    n_ctx: int
    is_end: Any


# ------------------------------------------------------------------------------------------ workers

def prompts_for_rows(tokenizer, frame, rows: Sequence[int], max_item_words: int | None, perspectives=None,
                     grade_names: Sequence[str] | None = None) -> list[PairPrompt]:
    """:class:`PairPrompt` of each dataset row: the judgement prompt, or with ``perspectives`` the
    multi-perspective annotation prompt (product cut to ``max_item_words``)."""
    fields = text_fields(frame)
    records = frame.iloc[list(rows)].to_dict("records")
    if perspectives is None:
        texts = [render_judge_prompt(tokenizer, str(r["query"]), item_text(r, fields), max_item_words)
                 for r in records]
    else:
        texts = [render_multi_prompt(tokenizer, perspectives, str(r["query"]), item_text(r, fields), grade_names,
                                     max_item_words) for r in records]
    qids = frame["query_id"].astype(str).to_numpy()
    iids = frame["item_id"].astype(str).to_numpy()
    out = []
    for r, text in zip(rows, texts):
        shared, pair = split_prompt(tokenizer, text)
        out.append(PairPrompt(str(qids[int(r)]), str(iids[int(r)]), shared, pair))
    return out


__all__ = ["PairPrompt", "split_prompt", "read_pair", "softmax", "JudgementReader", "RationaleReader",
           "PerspectiveVerdictReader", "SequenceLimits", "prompts_for_rows"]
