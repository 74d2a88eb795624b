"""Teacher completion text -> (rationale, label). Never raises on model output.

A well-formed completion (:mod:`lrkd.teacher.prompts`) is ``"<rationale>\\nLabel: <grade>"``, or for
the multi-perspective prompt ``"<Title 1>: <r1>\\n<Title 2>: <r2>\\n...\\nLabel: <grade>"``. Parsing is
tolerant of what small models write: any case (``label : perfect``), markdown around the prefix or
the grade (``**Label:** Perfect.``), text after the grade (``Perfect match``), text after the label
line (ignored). The first ``Label:`` decides.

Whatever the text, the result has ``error is None`` exactly when ``label`` is a grade name; otherwise
``label is None`` and ``error`` is one of :data:`PARSE_ERRORS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

PARSE_ERRORS = (
    "empty_output",         # nothing but whitespace
    "no_label",             # no "Label:" line (typically a truncated output)
    "empty_label",          # "Label:" with nothing after it
    "unknown_grade",        # "Label: <something that is not a grade>"
    "missing_perspective",  # multi: a perspective's "<Title>:" section is absent
    "empty_rationale",      # no reasoning before the label (or an empty section)
)

_MARKUP = "*_`#>"
_LABEL_RE = re.compile(r"[*_`#>\t ]*\blabel\b[*_`\t ]*:(?P<value>[^\n]*)", re.IGNORECASE)
_RATIONALE_HEADER_RE = re.compile(r"^\s*[*_`#>]*\s*(?:rationale|reasoning)\s*[*_`]*\s*:\s*", re.IGNORECASE)
_WORD_RE = re.compile(r"\w")


@dataclass(frozen=True)
class Parsed:
    """rationale: the text before the label line, stripped (the whole text when there is none);
    label: the grade name as spelled in ``grade_names``, or None; error: None or a parse error code."""

    rationale: str
    label: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ParsedMulti:
    """rationales: perspective name -> its section's text (only the sections found); label, error:
    as in :class:`Parsed`."""

    rationales: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _clean(text: str) -> str:
    """Strip whitespace and stray markdown at both ends."""
    return str(text).strip().strip(_MARKUP).strip()


def _normalise(text: str) -> str:
    return " ".join(str(text).replace("_", " ").lower().split())


def match_grade(value: str, grade_names: Sequence[str]) -> str | None:
    """The grade that ``value`` (the text after ``Label:``) names, or None.

    Case-insensitive; markdown, quotes and brackets around it are ignored; the value must start with
    the grade followed by a non-word character or its end (``"Perfect."``, ``"perfect match"``; not
    ``"perfection"``, not ``"not perfect"``). The longest matching grade wins."""
    text = _normalise(re.sub(r"^[\s*_`\"'<(\[{]+", "", str(value)))
    best = None
    for name in grade_names:
        grade = _normalise(name)
        if grade and text.startswith(grade) and (len(text) == len(grade) or not text[len(grade)].isalnum()):
            if best is None or len(grade) > len(_normalise(best)):
                best = str(name)
    return best


def _split_label(text: str, grade_names: Sequence[str]) -> tuple[str, str | None, str | None]:
    """(text before the first label line, grade or None, error or None)."""
    m = _LABEL_RE.search(text)
    if m is None:
        return text, None, "no_label"
    value = m.group("value").strip().strip(_MARKUP + " .:").strip()
    if not value:  # "**Label:**\nPerfect": the grade on the next non-empty line
        following = text[m.end():].strip().split("\n", 1)[0]
        value = following.strip().strip(_MARKUP + " .:").strip()
    if not value:
        return text[:m.start()], None, "empty_label"
    grade = match_grade(value, grade_names)
    return text[:m.start()], grade, None if grade is not None else "unknown_grade"


def parse_single(text: str | None, grade_names: Sequence[str]) -> Parsed:
    """Parse a per-perspective completion ``"<rationale>\\nLabel: <grade>"``."""
    text = "" if text is None else str(text)
    if not text.strip():
        return Parsed("", None, "empty_output")
    body, grade, error = _split_label(text, grade_names)
    rationale = _clean(_RATIONALE_HEADER_RE.sub("", body, count=1))
    if error is None and not _WORD_RE.search(rationale):
        error = "empty_rationale"
    return Parsed(rationale, grade if error is None else None, error)


def _title_pattern(title: str) -> re.Pattern:
    words = r"[\s_]+".join(re.escape(w) for w in title.split())
    return re.compile(rf"^[ \t*_`#>\-]*{words}[ \t*_`]*:", re.IGNORECASE | re.MULTILINE)


def parse_multi(text: str | None, perspectives: Sequence, grade_names: Sequence[str]) -> ParsedMulti:
    """Parse a multi-perspective completion. ``perspectives``: :class:`~lrkd.teacher.prompts.Perspective`
    objects; a section starts with its title and a colon at the start of a line, in any order."""
    text = "" if text is None else str(text)
    if not text.strip():
        return ParsedMulti({}, None, "empty_output")
    body, grade, error = _split_label(text, grade_names)
    starts = []
    for p in perspectives:
        m = _title_pattern(p.title).search(body)
        if m is not None:
            starts.append((m.start(), m.end(), p.name))
    starts.sort()
    rationales = {}
    for i, (_, end, name) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else len(body)
        rationales[name] = _clean(body[end:stop])
    if error is None and len(rationales) < len(perspectives):
        error = "missing_perspective"
    if error is None and any(not _WORD_RE.search(r) for r in rationales.values()):
        error = "empty_rationale"
    ordered = {p.name: rationales[p.name] for p in perspectives if p.name in rationales}
    return ParsedMulti(ordered, grade if error is None else None, error)


__all__ = ["Parsed", "ParsedMulti", "PARSE_ERRORS", "match_grade", "parse_single", "parse_multi"]
