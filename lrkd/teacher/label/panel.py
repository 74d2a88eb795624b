"""A panel of judgements per pair: few-shot examples in the shared prefix, several questions after it.

The direct judgement (:data:`lrkd.teacher.prompts.JUDGE_INSTRUCTION`) asks one question before the
pair. The panel puts the pair first and the questions last, so that one pair costs its own tokens
once plus a few tokens per question:

    <chat header> <instruction> [Examples: k gold-labelled pairs of other queries]   shared prefix
    Query: <query>  Product: <item>                                                 the pair
    <question i> <end of turn> <assistant> Answer:                                  one per question

(each question is read after a :class:`lrkd.teacher.runtime.batched.Rewind` to the pair's end). For each
question the reading is the softmax over its answers' first tokens ("yes"/"no", or the grade digits),
the pair's scores; the first question's answer distribution and its last-layer state are the soft
label and the latent of the reading part.

The few-shot examples come from a bank of gold-labelled train queries (``examples.bank``), in two
sets drawn from disjoint halves of the bank: a pair whose query is in the first half reads with the
second set, every other pair with the first, so a pair's own query never appears among its
examples. Following Thomas et al. (SIGIR 2024), several phrasings of the question are asked and
combined by a model fitted on gold labels (:mod:`lrkd.teacher.label.head`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from lrkd.data.encode import item_text
from lrkd.schema import text_fields
from lrkd.teacher.label.readers import softmax
from lrkd.teacher.runtime.batched import Feed, Prefix, Rewind
from lrkd.teacher.prompts import TASK_INTRO, clip_words, prompt_add_special_tokens, render_message

PANEL_INSTRUCTION = (f"{TASK_INTRO} A product is relevant when it is the kind of product the shopper searched for; "
                     f"an accessory, a part or a different kind of product is not.")
ANSWER_PREFIX = "Answer:"
PAIR_MARK = "Query: "
DEFAULT_QUESTIONS = {
    "relevant": {"text": "Is the product relevant to the query? Answer yes or no.", "answers": ["yes", "no"]},
    "exact": {"text": "Is the product exactly the kind of product the shopper wants? Answer yes or no.",
              "answers": ["yes", "no"]},
    "buy": {"text": "Would a shopper who typed this query want to buy this product? Answer yes or no.",
            "answers": ["yes", "no"]},
    "grade": {"text": "How well does the product match the query? Answer with one word: perfect, good, fair or poor.",
              "answers": ["perfect", "good", "fair", "poor"]},
}


@dataclass(frozen=True)
class Question:
    """One question of the panel: name, text, answers (first = most relevant)."""

    name: str
    text: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    """A gold-labelled pair shown to the teacher: query id, query, item text, relevant or not."""

    query_id: str
    query: str
    item: str
    relevant: bool


def questions_from_config(node: Mapping | None) -> list[Question]:
    """``{name: {text, answers}}`` (in order) -> questions; None: :data:`DEFAULT_QUESTIONS`."""
    node = DEFAULT_QUESTIONS if node is None else node
    out = [Question(str(k), " ".join(str(v["text"]).split()), tuple(str(a) for a in v["answers"]))
           for k, v in dict(node).items()]
    if not out:
        raise ValueError("the panel needs at least one question")
    for q in out:
        if len(q.answers) < 2:
            raise ValueError(f"question {q.name!r} needs >= 2 answers, got {list(q.answers)}")
    return out


def score_names(questions: Sequence[Question]) -> list[str]:
    """The names of a panel's per-pair scores: ``<question>/<answer>`` for every answer."""
    return [f"{q.name}/{a}" for q in questions for a in q.answers]


def choose_bank(frame, train_rows: Sequence[int], relevant_up_to: int, size: int, seed: int) -> list[str]:
    """``size`` train queries (seeded) with >= 2 relevant and >= 2 irrelevant gold pairs each: the
    bank of few-shot examples. Give them to ``data.split.train_only`` so that cross-validation
    keeps them in train in every fold."""
    rows = np.asarray(train_rows, dtype=np.int64)
    labels = frame["label"].to_numpy()[rows]
    qids = frame["query_id"].astype(str).to_numpy()[rows]
    ok = []
    for q in sorted(set(qids)):
        mine = labels[qids == q]
        if ((mine >= 0) & (mine <= relevant_up_to)).sum() >= 2 and (mine > relevant_up_to).sum() >= 2:
            ok.append(q)
    order = np.random.default_rng(int(seed)).permutation(len(ok))
    if len(ok) < size:
        raise ValueError(f"only {len(ok)} train queries have >= 2 relevant and >= 2 irrelevant pairs; "
                         f"the few-shot bank needs {size}")
    return [ok[i] for i in order[:int(size)]]


def choose_examples(frame, rows: Sequence[int], bank: Sequence[str], k: int, relevant_up_to: int,
                    seed: int) -> tuple[list[Example], list[Example]]:
    """Two example sets of ``k`` pairs each (half relevant, half not; at most one pair per query and
    side while the bank allows), from the labelled ``rows`` of the bank's queries: set 0 from the
    first half of ``bank``, set 1 from the second. Returns ([], []) for k = 0."""
    if k <= 0:
        return [], []
    bank = [str(q) for q in bank]
    if len(bank) < 2:
        raise ValueError(f"few-shot examples need a bank of >= 2 queries, got {bank}")
    halves = [bank[:len(bank) // 2], bank[len(bank) // 2:]]
    fields = text_fields(frame)
    rng = np.random.default_rng(int(seed))
    labels = frame["label"].to_numpy()
    qids = frame["query_id"].astype(str).to_numpy()
    sets = []
    for half in halves:
        chosen: list[Example] = []
        for relevant in (True, False):
            pool = [int(r) for r in rows if qids[int(r)] in half and labels[int(r)] >= 0
                    and (labels[int(r)] <= relevant_up_to) == relevant]
            pool = [pool[i] for i in rng.permutation(len(pool))]
            want = k // 2 if relevant else k - k // 2
            picked, seen = [], set()
            for r in pool:  # one pair per query first
                if len(picked) < want and qids[r] not in seen:
                    picked.append(r)
                    seen.add(qids[r])
            picked += [r for r in pool if r not in picked][:want - len(picked)]
            if len(picked) < want:
                raise ValueError(f"the bank half {half} has {len(pool)} {'relevant' if relevant else 'irrelevant'} "
                                 f"labelled pairs, {want} needed")
            record = frame.iloc[picked].to_dict("records")
            chosen += [Example(str(x["query_id"]), str(x["query"]), item_text(x, fields), relevant) for x in record]
        order = rng.permutation(len(chosen))  # relevant and irrelevant interleaved at random
        sets.append([chosen[i] for i in order])
    return sets[0], sets[1]


def panel_message(query: str, item: str, question: Question, examples: Sequence[Example],
                  max_item_words: int | None) -> str:
    """The user message: instruction, examples, the pair, the question."""
    lines = [PANEL_INSTRUCTION]
    if examples:
        lines.append("Examples:")
        for ex in examples:
            lines += [f"{PAIR_MARK}{' '.join(ex.query.split())}", f"Product: {clip_words(ex.item, max_item_words)}",
                      f"Relevant: {'yes' if ex.relevant else 'no'}"]
        lines.append("Now the pair to judge.")
    lines += [f"{PAIR_MARK}{' '.join(str(query).split())}", f"Product: {clip_words(item, max_item_words)}",
              question.text]
    return "\n".join(lines)


@dataclass
class PanelPrompt:
    """One pair's panel prompt as token segments: shared, pair, one tail per question."""

    query_id: str
    item_id: str
    shared: list[int]
    pair: list[int]
    tails: list[list[int]]


def panel_prompt(tokenizer, query_id: str, item_id: str, query: str, item: str, questions: Sequence[Question],
                 examples: Sequence[Example], max_item_words: int | None) -> PanelPrompt:
    """Render the panel for one pair and cut it into token segments: the shared prefix ends before
    the pair's ``Query:`` line, the pair before the question; each segment tokenized alone."""
    shared = pair = None
    tails = []
    for question in questions:
        text = render_message(tokenizer, panel_message(query, item, question, examples, max_item_words))
        text += ANSWER_PREFIX
        cut_pair = text.rindex("\n" + PAIR_MARK) + 1
        cut_question = text.index(question.text, cut_pair)
        head = text[:cut_pair]
        if shared is None:
            shared = tokenizer(head, add_special_tokens=prompt_add_special_tokens(tokenizer))["input_ids"]
            pair = tokenizer(text[cut_pair:cut_question], add_special_tokens=False)["input_ids"]
        tails.append(tokenizer(text[cut_question:], add_special_tokens=False)["input_ids"])
    return PanelPrompt(str(query_id), str(item_id), list(shared), list(pair), tails)


class PanelReader:
    """Reads one :class:`PanelPrompt` (a :class:`lrkd.teacher.runtime.batched.BatchedDecoder` request):
    returns ``(first question's answer probabilities [A], its decision state [1, D], {}, scores)``,
    scores = {``<question>/<answer>``: probability} of every question. ``answer_ids``: per question,
    the first token of each answer after ``Answer:`` (:func:`lrkd.teacher.tokens.answer_token_ids`)."""

    kind = "panel"

    def __init__(self, questions: Sequence[Question], answer_ids: Sequence[Sequence[int]]):
        self.questions = list(questions)
        self.answer_ids = [list(a) for a in answer_ids]

    def program(self, prompt: PanelPrompt, limits=None):
        yield Prefix(tuple(prompt.shared))
        yield Feed(prompt.pair, "none")
        end = len(prompt.shared) + len(prompt.pair)
        scores, first = {}, None
        for i, (question, tail, ids) in enumerate(zip(self.questions, prompt.tails, self.answer_ids)):
            if i:
                yield Rewind(end)
            result = yield Feed(tail, "last", logit_ids=ids, hidden=i == 0)
            probs = softmax(result.logits)
            scores.update({f"{question.name}/{a}": float(p) for a, p in zip(question.answers, probs)})
            if i == 0:
                first = (probs, result.hidden[-1:].astype(np.float32))
        return first[0], first[1], {}, scores

    def __call__(self, runtime, prompt: PanelPrompt):
        """The same reading on a one-sequence :class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime`."""
        scores, first = {}, None
        for i, (question, tail, ids) in enumerate(zip(self.questions, prompt.tails, self.answer_ids)):
            reading = runtime.read([prompt.shared, prompt.pair], tail, hidden=i == 0, logit_ids=ids)
            probs = softmax(reading.logits)
            scores.update({f"{question.name}/{a}": float(p) for a, p in zip(question.answers, probs)})
            if i == 0:
                first = (probs, reading.hidden[-1:].astype(np.float32))
        return first[0], first[1], {}, scores


__all__ = ["Question", "Example", "PanelPrompt", "PanelReader", "questions_from_config", "score_names",
           "choose_bank", "choose_examples", "panel_message", "panel_prompt", "DEFAULT_QUESTIONS", "PANEL_INSTRUCTION"]
