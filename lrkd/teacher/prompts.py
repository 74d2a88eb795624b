"""Perspectives as data, and the one prompt/completion format of the teacher.

A perspective is a config file ``conf/perspective/<name>.yaml`` = ``{<name>: {title, instruction}}``.
Two prompts, shared by generation, SFT, DPO and annotation:

- per-perspective (generation): the perspective's instruction, the query, the item, the grades;
  completion ``"<rationale>\\nLabel: <grade>"`` (:func:`format_single_completion`).
- multi-perspective (SFT/DPO/annotation): every perspective's instruction; completion
  ``"<Title 1>: <rationale 1>\\n<Title 2>: <rationale 2>\\n...\\nLabel: <grade>"``
  (:func:`format_multi_completion`).

A prompt is rendered with the tokenizer's chat template (one user message, generation prompt
appended) when it has one, as plain text otherwise (``tokenizer=None`` also gives plain text).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

LABEL_PREFIX = "Label:"

TASK_INTRO = "You judge how relevant a product is to a shopper's search query."


@dataclass(frozen=True)
class Perspective:
    """One reasoning perspective. name: config key (``user_intent``); title: the header written in
    multi-perspective completions (``User intent``); instruction: what to reason about."""

    name: str
    title: str
    instruction: str


def perspectives_from_config(node: Mapping) -> list[Perspective]:
    """``cfg.perspective`` (``{name: {title, instruction}}``, in selection order) -> perspectives.

    Raises ValueError on a missing/empty title or instruction, or two perspectives sharing a title
    (titles delimit the sections of a multi-perspective completion)."""
    out: list[Perspective] = []
    for name, spec in dict(node).items():
        spec = dict(spec or {})
        title = " ".join(str(spec.get("title") or "").split())
        instruction = " ".join(str(spec.get("instruction") or "").split())
        if not title or not instruction:
            raise ValueError(f"perspective {name!r} (conf/perspective/{name}.yaml) needs a non-empty "
                             f"'title' and 'instruction', got keys {sorted(spec)}")
        if ":" in title or "\n" in title:
            raise ValueError(f"perspective {name!r}: the title {title!r} may not contain ':'")
        out.append(Perspective(str(name), title, instruction))
    if not out:
        raise ValueError("no perspective selected (cfg.perspective is empty)")
    titles = [p.title.lower() for p in out]
    if len(set(titles)) != len(titles):
        raise ValueError(f"perspective titles must be distinct (case-insensitive), got {[p.title for p in out]}")
    return out


def _grades(grade_names: Sequence[str]) -> str:
    return ", ".join(str(g) for g in grade_names)


def clip_words(text: str, max_words: int | None) -> str:
    """``text`` with whitespace collapsed, cut to its first ``max_words`` words (None: all) with
    " ..." appended when cut. Keeps prompts short: prefill cost grows with prompt length."""
    words = str(text).split()
    if max_words is None or len(words) <= int(max_words):
        return " ".join(words)
    return " ".join(words[:int(max_words)]) + " ..."


def _pair_block(query: str, item: str, grade_names: Sequence[str], max_item_words: int | None = None) -> str:
    return (f"Query: {' '.join(str(query).split())}\n"
            f"Product: {clip_words(item, max_item_words)}\n"
            f"Grades, from most to least relevant: {_grades(grade_names)}.")


def perspective_message(perspective: Perspective, query: str, item: str, grade_names: Sequence[str],
                        max_item_words: int | None = None) -> str:
    """The user message of the per-perspective generation prompt (no chat template); the item text
    is cut to ``max_item_words`` words (None: whole)."""
    return (f"{TASK_INTRO}\n"
            f"Perspective: {perspective.title}. {perspective.instruction}\n"
            f"{_pair_block(query, item, grade_names, max_item_words)}\n"
            f"Reason in one or two sentences from this perspective only, then end with one line "
            f"\"{LABEL_PREFIX} <grade>\", where <grade> is one of: {_grades(grade_names)}.")


def multi_message(perspectives: Sequence[Perspective], query: str, item: str, grade_names: Sequence[str],
                  max_item_words: int | None = None) -> str:
    """The user message of the multi-perspective prompt (no chat template)."""
    lines = [f"{TASK_INTRO} Reason from each perspective below in turn:"]
    lines += [f"- {p.title}: {p.instruction}" for p in perspectives]
    headers = ", ".join(f"\"{p.title}: ...\"" for p in perspectives)
    lines.append(_pair_block(query, item, grade_names, max_item_words))
    lines.append(f"Write one short line per perspective, in this order: {headers}. Then end with one line "
                 f"\"{LABEL_PREFIX} <grade>\", where <grade> is one of: {_grades(grade_names)}.")
    return "\n".join(lines)


JUDGE_INSTRUCTION = (f"{TASK_INTRO} A product is relevant when it is the kind of product the shopper searched for; "
                     f"an accessory, a part or a different kind of product is not. "
                     f"Is the product relevant to the query? Answer yes or no.")
JUDGE_PREFIX = "Answer:"
JUDGE_ANSWERS = ("yes", "no")


def judge_message(query: str, item: str, max_item_words: int | None = None) -> str:
    """The user message of the direct judgement prompt (grade scoring without reasoning): the
    instruction first (shared by every pair, so it stays in the KV cache), then the pair; the
    reading is the teacher's P(yes) after ``"Answer:"`` (:mod:`lrkd.teacher.label.score_pool`)."""
    return (f"{JUDGE_INSTRUCTION}\n"
            f"Query: {' '.join(str(query).split())}\n"
            f"Product: {clip_words(item, max_item_words)}")


def render_judge_prompt(tokenizer, query: str, item: str, max_item_words: int | None = None) -> str:
    return render_message(tokenizer, judge_message(query, item, max_item_words))


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def prompt_add_special_tokens(tokenizer) -> bool:
    """Whether to tokenize a rendered prompt with ``add_special_tokens=True``: not when a chat
    template rendered it (the template writes its own special tokens), yes for plain text."""
    return not has_chat_template(tokenizer)


def render_message(tokenizer, message: str) -> str:
    """One user message -> the prompt string: the chat template with the assistant's generation
    prompt appended when the tokenizer has one; plain text (``message + "\\n"``) otherwise."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message + "\n"


def render_perspective_prompt(tokenizer, perspective: Perspective, query: str, item: str,
                              grade_names: Sequence[str], max_item_words: int | None = None) -> str:
    """The generation prompt of one perspective for one pair (item = ``item_text(row, fields)``, cut
    to ``max_item_words`` words; ``teacher.max_item_words`` in config)."""
    return render_message(tokenizer, perspective_message(perspective, query, item, grade_names, max_item_words))


def render_multi_prompt(tokenizer, perspectives: Sequence[Perspective], query: str, item: str,
                        grade_names: Sequence[str], max_item_words: int | None = None) -> str:
    """The SFT/DPO/annotation prompt: all perspectives' instructions for one pair (item cut to
    ``max_item_words`` words)."""
    return render_message(tokenizer, multi_message(perspectives, query, item, grade_names, max_item_words))


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed to single spaces, stripped."""
    return " ".join(str(text).split())


def format_single_completion(rationale: str, label: str) -> str:
    """``"<rationale>\\nLabel: <grade>"`` (the per-perspective completion)."""
    return f"{str(rationale).strip()}\n{LABEL_PREFIX} {label}"


def format_multi_completion(rationales: Mapping[str, str], perspectives: Sequence[Perspective], label: str) -> str:
    """``"<Title 1>: <rationale 1>\\n...\\nLabel: <grade>"``, perspectives in the given order; each
    rationale on one line (newlines collapsed, so that titles only ever start lines).

    Raises KeyError naming a perspective without a rationale."""
    missing = [p.name for p in perspectives if p.name not in rationales]
    if missing:
        raise KeyError(f"no rationale for perspective(s) {missing}")
    lines = [f"{p.title}: {one_line(rationales[p.name])}" for p in perspectives]
    lines.append(f"{LABEL_PREFIX} {label}")
    return "\n".join(lines)


__all__ = ["Perspective", "perspectives_from_config", "LABEL_PREFIX", "TASK_INTRO", "JUDGE_INSTRUCTION",
           "JUDGE_PREFIX", "JUDGE_ANSWERS", "clip_words", "one_line", "perspective_message", "multi_message",
           "judge_message", "render_message", "render_perspective_prompt", "render_multi_prompt",
           "render_judge_prompt", "has_chat_template", "prompt_add_special_tokens", "format_single_completion",
           "format_multi_completion"]
