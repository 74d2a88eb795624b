"""Tests of the teacher. Shared helpers of the generation tests: a hand-made schema frame, a
scripted backend, and a CPU-thread guard (the machine is shared: one thread keeps tiny models fast)."""
from __future__ import annotations

import re

import pandas as pd

from lrkd.teacher.prompts import Perspective

GRADES = ["perfect", "good", "fair", "poor"]
INTENT = Perspective("user_intent", "User intent", "What does the shopper want?")
SPECS = Perspective("structured_analysis", "Structured analysis", "Compare attribute by attribute.")


def schema_frame(queries: list[str], labels: list[int]) -> pd.DataFrame:
    """One pair per query (query_id q<i>, item_id i<i>), a brand text field."""
    df = pd.DataFrame({"query_id": [f"q{i}" for i in range(len(queries))], "query": queries,
                       "item_id": [f"i{i}" for i in range(len(queries))],
                       "item_title": [f"Item for {q}" for q in queries], "brand": ["Acme"] * len(queries),
                       "label": labels})
    df.attrs["text_fields"] = ["brand"]
    return df


_QUERY = re.compile(r"^Query: (.*)$", re.MULTILINE)
_PERSPECTIVE = re.compile(r"^Perspective: (.*?)\. ", re.MULTILINE)


class ScriptedBackend:
    """A GenerationBackend answering from a script {(query, perspective title): [text, ...]} (texts
    are cycled; unknown prompts get "<query>/<title>/<seed>/<i>" without a label). ``fail_on_call``:
    the call index (0-based) that raises RuntimeError. ``calls`` records (prompt queries, seed)."""

    def __init__(self, script: dict | None = None, fail_on_call: int | None = None):
        self.script = script or {}
        self.fail_on_call = fail_on_call
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts, n, temperature, max_new_tokens, seed):
        keys = [(_QUERY.search(p).group(1), _PERSPECTIVE.search(p).group(1)) for p in prompts]
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            self.calls.append(([k[0] for k in keys], seed))
            raise RuntimeError("scripted backend failure")
        self.calls.append(([k[0] for k in keys], seed))
        out = []
        for key in keys:
            texts = self.script.get(key)
            out.append([texts[i % len(texts)] if texts else f"{key[0]}/{key[1]}/{seed}/{i}" for i in range(n)])
        return out
