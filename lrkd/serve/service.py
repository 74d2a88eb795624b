"""What the HTTP server (:mod:`lrkd.serve.app`) serves, apart from HTTP: the model it loaded
(:func:`load_model`), pairs turned into token ids exactly as ``lrkd predict`` does
(:class:`PairTokenizer`, the one pair encoding of :mod:`lrkd.data.encode`), and the scores.

Scores. For a pair with class probabilities p (label-set order):

    expected_relevance  E = sum_c p_c * value_c     (lrkd predict's column; the ranking score)
    score               (E - min value) / (max value - min value), in [0, 1]

The rerank APIs' ``score`` (TEI) and ``relevance_score`` (Cohere, Jina) are ``score``; TEI's
``raw_scores: true`` returns E itself. Both order documents exactly as lrkd predict's
``expected_relevance`` does (an increasing affine map of it).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lrkd.data.encode import check_max_length, pair_token_ids, query_text
from lrkd.schema import DataError
from lrkd.serve.config import ServingConfig, read_sidecar
from lrkd.serve.scorers import OnnxScorer, Scorer, TorchScorer, load_served

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """Bad input: answered with ``status`` (4xx) and a JSON error naming ``field``."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass
class ServedModel:
    """A scorer with its serving config. backend: onnx | torch; precision: fp32 | int8-dynamic."""

    scorer: Scorer
    config: ServingConfig
    name: str
    backend: str
    precision: str
    source: str
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None


def load_model(checkpoint: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
               hf_dir: str | os.PathLike | None = None, *, backend: str = "onnx", int8: bool = False,
               threads: int | None = None, max_length: int | None = None, name: str | None = None,
               spin: bool = False) -> ServedModel:
    """The model to serve, from exactly one of a student ``.ckpt``, an exported ``.onnx`` (with its
    sidecar) or a ``save_pretrained`` directory. A checkpoint or directory is served with ONNX
    Runtime after exporting it to a temporary directory (``int8``: quantized there too), or with
    eager PyTorch (``backend="torch"``). ``spin``: let ONNX Runtime's threads spin between runs."""
    given = [p for p in (checkpoint, onnx, hf_dir) if p is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of a checkpoint, an ONNX model or a save_pretrained directory")
    if backend not in ("onnx", "torch"):
        raise ValueError(f"backend must be onnx or torch, got {backend!r}")
    source = Path(given[0])
    name = name or (source.stem if source.is_file() else source.name)
    if onnx is not None:
        if backend == "torch" or int8:
            raise ValueError("an ONNX model is served as it is: leave out --backend torch and --int8 "
                             "(export an int8 model with `lrkd export --int8`)")
        scorer = OnnxScorer(onnx, threads=threads, spin=spin)
        precision = str(read_sidecar(onnx).get("precision", "fp32"))
        return ServedModel(scorer, scorer.config.replace(max_length=max_length), name, "onnx", precision, str(source))
    student, config = load_served(source, max_length=max_length)
    if backend == "torch":
        if int8:
            raise ValueError("--int8 needs the ONNX Runtime backend")
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        return ServedModel(TorchScorer(student), config, name, "torch", "fp32", str(source))
    from lrkd.serve.export import export_onnx, quantize_int8

    workdir = tempfile.TemporaryDirectory(prefix="lrkd-serve-")
    path = export_onnx(student, Path(workdir.name) / "student.onnx", config)
    if int8:
        path = quantize_int8(path)
    log.info("exported %s to %s", source, path)
    return ServedModel(OnnxScorer(path, threads=threads, spin=spin), config, name, "onnx",
                       "int8-dynamic" if int8 else "fp32", str(source), workdir)


class PairTokenizer:
    """(query, item texts) -> token ids and type ids of ``[CLS] query [SEP] item [SEP]``, as
    :class:`lrkd.data.encode.PairEncoder` (``lrkd predict``) builds them: the query's whitespace
    collapsed, the item truncated first to ``max_length`` tokens (Right: its end is cut; Left: its
    start)."""

    def __init__(self, tokenizer, max_length: int):
        check_max_length(tokenizer, max_length)
        self.right = tokenizer
        self.left = copy.deepcopy(tokenizer)
        self.left.truncation_side = "left"
        self.max_length = int(max_length)
        self.specials = tokenizer.num_special_tokens_to_add(pair=True)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

    def query(self, text, field: str = "query") -> str:
        """The query as the model reads it; RequestError when it is empty."""
        q = query_text(text)
        if not q:
            raise RequestError("the query is empty", field)
        return q

    def __call__(self, query: str, items: Sequence[str], *, truncate: bool = True, left: bool = False,
                 max_item_tokens: int | None = None, field: str = "texts") -> tuple[list, list]:
        """Token ids and type ids of each (query, item) pair. ``truncate=False``: RequestError (413)
        when a pair is longer than the model reads. ``max_item_tokens``: items cut to that many tokens
        first (Cohere v2's ``max_tokens_per_doc``)."""
        tokenizer = self.left if left else self.right
        max_length = self.max_length
        if max_item_tokens is not None:
            if max_item_tokens < 1:
                raise RequestError("must be >= 1", "max_tokens_per_doc")
            q_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
            max_length = max(min(max_length, q_len + self.specials + int(max_item_tokens)), self.specials + 2)
        if not truncate:
            q_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
            lengths = [len(x) for x in tokenizer(list(items), add_special_tokens=False)["input_ids"]]
            too_long = [i for i, n in enumerate(lengths) if q_len + n + self.specials > max_length]
            if too_long:
                i = too_long[0]
                raise RequestError(f"the pair of the query and {field}[{i}] has {q_len + lengths[i] + self.specials} "
                                   f"tokens, more than the model reads ({max_length}); send truncate: true",
                                   f"{field}[{i}]", status=413)
        return pair_token_ids(tokenizer, [query] * len(items), list(items), max_length)


class Scores:
    """Scores of class probabilities under a label set (see the module docstring)."""

    def __init__(self, config: ServingConfig):
        label_set = config.label_set
        self.names = list(label_set.names)
        self.gains = np.asarray(label_set.gains, dtype=np.float64)
        self.values = np.asarray(label_set.values, dtype=np.float64)
        lo, hi = float(self.values.min()), float(self.values.max())
        self.low, self.span = lo, (hi - lo) or 1.0
        self.rule = config.decision_rule()

    def expected_relevance(self, probs: np.ndarray) -> np.ndarray:
        return probs @ self.values

    def normalised(self, probs: np.ndarray) -> np.ndarray:
        return (self.expected_relevance(probs) - self.low) / self.span

    def grades(self, probs: np.ndarray) -> list[str]:
        return [self.names[int(g)] for g in self.rule.decide(probs)]


def ranked(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Document indices by descending score (ties: the earlier document first), the first ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order if top_n is None else order[:top_n]


__all__ = ["RequestError", "ServedModel", "load_model", "PairTokenizer", "Scores", "ranked"]
