"""The reward dimensions of CRSD's multi-dimensional reward: pure functions, one score in [0, 1] per
multi-perspective completion (``"<Title 1>: <r1>\\n...\\nLabel: <grade>"``).

Each has TRL's reward-function signature, ``fn(completions, **context) -> list[float]`` (a later
GRPO stage can pass them to ``GRPOTrainer(reward_funcs=...)`` with ``functools.partial`` for the
constant arguments). Per-completion context comes as lists aligned with ``completions``:

    gold               gold grade names (correctness)
    item_text          the item's text as the prompt showed it (faithfulness)
    query              the queries (faithfulness: a rationale may cite the query)
    perspective_labels dicts perspective -> grade or None (consistency; absent: read from the text)

and the constants ``grade_names`` (most relevant first) and ``perspectives``
(:class:`lrkd.teacher.prompts.Perspective`).

correctness   1 - |grade(label) - grade(gold)| / (C - 1); 0 when no label parses
format        mean of: a grade label parses; the share of perspectives whose section is present and
              non-empty; 1 - the share of repeated word 3-grams
consistency   the share of perspectives whose label equals the final label (0 without a final label;
              1 when no perspective states one)
faithfulness  the share of the rationale's cited facts (numbers, brand/model-like tokens) found in the
              item or query text (1 when it cites none), times a copy penalty: 1 when the longest
              verbatim run of item words is at most ``copy_free`` of the item's words, falling
              linearly to 0 at a whole copy
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from lrkd.teacher.parse import match_grade, parse_multi

_WORD = re.compile(r"[A-Za-z0-9][\w.\-/]*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
# capitalised words that are not brands
_COMMON = {w.lower() for w in (
    "The This That These Those It Its A An And Or But If So As At In On Of For To From With By Is Are Was Were Be "
    "Not No Yes User Users Shopper Shopper's Query Item Product Products Label Title Brand Description Attributes "
    "Perfect Good Fair Poor Exact Substitute Complement Irrelevant Relevant Intent Structured Analysis Business "
    "Rules Match Matches Price Colour Color Type Size I We They He She You They").split()}


def _grade_index(name: str | None, grade_names: Sequence[str]) -> int | None:
    if name is None:
        return None
    grade = match_grade(str(name), grade_names)
    return None if grade is None else [str(g) for g in grade_names].index(grade)


def correctness(completions: Sequence[str], *, gold: Sequence[str], grade_names: Sequence[str],
                perspectives: Sequence, **_) -> list[float]:
    """Ordinal closeness of the completion's label to the gold grade (see the module docstring)."""
    span = max(len(grade_names) - 1, 1)
    out = []
    for text, g in zip(completions, gold):
        parsed = parse_multi(text, perspectives, grade_names)
        label, target = _grade_index(parsed.label if parsed.label is not None else _any_label(text, grade_names),
                                     grade_names), _grade_index(g, grade_names)
        out.append(0.0 if label is None or target is None else 1.0 - abs(label - target) / span)
    return out


def _any_label(text: str, grade_names: Sequence[str]) -> str | None:
    """The grade of the first ``Label:`` line even when a section is missing."""
    m = re.search(r"\blabel\b[*_`\t ]*:([^\n]*)", str(text or ""), re.IGNORECASE)
    return match_grade(m.group(1), grade_names) if m else None


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """The share of the word n-grams of ``text`` that repeat an earlier one (0 = no repetition)."""
    words = str(text).lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def format_score(completions: Sequence[str], *, grade_names: Sequence[str], perspectives: Sequence, **_) -> list[float]:
    """Parses, every perspective's section present, no repetition (see the module docstring)."""
    out = []
    for text in completions:
        parsed = parse_multi(text, perspectives, grade_names)
        label_ok = float(_any_label(text, grade_names) is not None)
        sections = sum(bool(re.search(r"\w", parsed.rationales.get(p.name, ""))) for p in perspectives)
        out.append((label_ok + sections / max(len(perspectives), 1) + 1.0 - repeated_ngram_share(text)) / 3.0)
    return out


def _section_label(section: str, grade_names: Sequence[str]) -> str | None:
    """The last grade name a section's text mentions (its verdict), or None."""
    found = None
    for word in re.findall(r"\w+", str(section)):
        grade = match_grade(word, grade_names)
        found = grade if grade is not None and len(grade.split()) == 1 else found
    return found


def consistency(completions: Sequence[str], *, grade_names: Sequence[str], perspectives: Sequence,
                perspective_labels: Sequence[Mapping[str, str | None] | None] | None = None, **_) -> list[float]:
    """Agreement of each perspective's label with the final one (see the module docstring)."""
    out = []
    for i, text in enumerate(completions):
        final = _grade_index(_any_label(text, grade_names), grade_names)
        if final is None:
            out.append(0.0)
            continue
        labels = perspective_labels[i] if perspective_labels is not None else None
        if labels is None:
            sections = parse_multi(text, perspectives, grade_names).rationales
            labels = {name: _section_label(s, grade_names) for name, s in sections.items()}
        stated = [_grade_index(v, grade_names) for v in labels.values() if v is not None]
        stated = [v for v in stated if v is not None]
        out.append(1.0 if not stated else sum(v == final for v in stated) / len(stated))
    return out


def cited_facts(text: str) -> list[str]:
    """The facts a rationale cites: numbers, and tokens that look like brands or model names (a
    capital letter or digit beyond a word's first character, or a capitalised word that is not at a
    sentence start nor a common word). Lower-cased, in order, without repeats."""
    facts: list[str] = []
    sentence_start = True
    for m in _WORD.finditer(str(text)):
        word = m.group(0).rstrip(".-/")
        before = str(text)[max(0, m.start() - 2):m.start()]
        starts = sentence_start or bool(re.search(r"[.!?:\n]\s*$", before))
        sentence_start = False
        if not word:
            continue
        is_number = bool(_NUMBER.fullmatch(word))
        inner_caps = any(c.isupper() or c.isdigit() for c in word[1:]) and any(c.isalpha() for c in word)
        capitalised = word[0].isupper() and not starts and word.lower() not in _COMMON
        if is_number or inner_caps or capitalised:
            fact = word.lower()
            if fact not in facts:
                facts.append(fact)
    return facts


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous word sequence of ``a`` also in ``b``."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def faithfulness(completions: Sequence[str], *, item_text: Sequence[str], grade_names: Sequence[str],
                 perspectives: Sequence, query: Sequence[str] | None = None, copy_free: float = 0.5,
                 **_) -> list[float]:
    """Cited facts found in the item (or query) text, times the copy penalty (module docstring)."""
    out = []
    for i, text in enumerate(completions):
        parsed = parse_multi(text, perspectives, grade_names)
        body = " ".join(parsed.rationales.values()) if parsed.rationales else re.split(r"(?im)^\s*label\s*:",
                                                                                        str(text))[0]
        source = f"{item_text[i]} {query[i] if query is not None else ''}".lower()
        source_words = set(_WORD.findall(source)) | {w.rstrip(".-/") for w in _WORD.findall(source)}
        facts = cited_facts(body)
        found = sum(f in source_words for f in facts)
        precision = 1.0 if not facts else found / len(facts)
        item_words = str(item_text[i]).lower().split()
        copied = _longest_common_run(str(body).lower().split(), item_words) / max(len(item_words), 1)
        penalty = 1.0 if copied <= copy_free else max(0.0, 1.0 - (copied - copy_free) / (1.0 - copy_free))
        out.append(precision * penalty)
    return out


DIMENSIONS: dict[str, Callable[..., list[float]]] = {"correctness": correctness, "format": format_score,
                                                      "consistency": consistency, "faithfulness": faithfulness}


def score_dimensions(completions: Sequence[str], names: Sequence[str], **context) -> dict[str, list[float]]:
    """{dimension: scores} for the named dimensions of :data:`DIMENSIONS`."""
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown reward dimension(s) {unknown}; choose from {sorted(DIMENSIONS)}")
    return {n: [float(v) for v in DIMENSIONS[n](completions, **context)] for n in names}


__all__ = ["correctness", "format_score", "consistency", "faithfulness", "cited_facts", "repeated_ngram_share",
           "score_dimensions", "DIMENSIONS"]
