"""Scorers: (input_ids, attention_mask, token_type_ids) -> class probabilities, eager PyTorch
(:class:`TorchScorer`) or ONNX Runtime (:class:`OnnxScorer`), and loading a trained student with
its serving config from what training or export wrote:

    a ``.ckpt`` file                  a Lightning checkpoint of the student stage  } lrkd.student.checkpoint.
    a directory with lrkd_config.json the save_pretrained form (lrkd.serve.hf)     } load_student
    an ``.onnx`` file                 an exported student (lrkd.serve.export) with its JSON sidecar

Nothing here imports Lightning: scoring needs only the served model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lrkd.schema import DataError
from lrkd.serve.config import ServingConfig, read_sidecar, sidecar_path
from lrkd.student.checkpoint import load_student
from lrkd.student.model import RelevanceStudent


class Scorer(Protocol):
    """(input_ids, attention_mask, token_type_ids) [B, L] int64 arrays -> class probabilities [B, C]
    float32 (rows sum to 1)."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray) -> np.ndarray: ...


class TorchScorer:
    """Eager PyTorch scoring with a module that has ``predict_logits`` (a RelevanceStudent, or
    the StudentModule that trains one)."""

    def __init__(self, module):
        self.module = module.eval()

    def __call__(self, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        with torch.inference_mode():
            logits = self.module.predict_logits(torch.as_tensor(input_ids), torch.as_tensor(attention_mask),
                                                torch.as_tensor(token_type_ids))
            return logits.float().softmax(-1).numpy()


class OnnxScorer:
    """ONNX Runtime scoring of an exported student: the :class:`Scorer` interface.
    threads: intra-op threads (None = ONNX Runtime's default, all cores). spin: whether idle
    intra-op threads spin-wait for the next run (ONNX Runtime's default; off lets a busy server's
    other threads have the cores between batches)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = True):
        import onnxruntime as ort  # the serve extra

        self.path = Path(path)
        if not self.path.exists():
            raise DataError("ONNX model not found", path=str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own error types for a file it cannot parse
            raise DataError(f"not a readable ONNX model ({str(e).splitlines()[0]}); expected a student "
                            f"exported by `lrkd export`", path=str(path)) from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def config(self) -> ServingConfig:
        return ServingConfig.from_dict(read_sidecar(self.path))

    def run(self, input_ids, attention_mask, token_type_ids) -> dict[str, np.ndarray]:
        """All outputs by name ({"logits", "probs"}: [B, C] float32)."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {k: np.ascontiguousarray(np.asarray(feed[k]), dtype=np.int64) for k in self.input_names}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feed)))

    def __call__(self, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        out = self.run(input_ids, attention_mask, token_type_ids)
        if "probs" in out:
            return out["probs"]
        logits = out["logits"]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def load_served(checkpoint: str | os.PathLike, max_length: int | None = None
                ) -> tuple[RelevanceStudent, ServingConfig]:
    """A trained student (eval mode) and its serving config, from a Lightning ``.ckpt`` (loaded
    with ``weights_only=True``) or a ``save_pretrained`` directory
    (:func:`lrkd.student.checkpoint.load_student`). A file that is neither raises a
    :class:`~lrkd.schema.DataError` that names it and says what was expected."""
    loaded = load_student(checkpoint)
    return loaded.model, ServingConfig.of_student(loaded, max_length=max_length)


def load_scorer(checkpoint: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
                max_length: int | None = None, threads: int | None = None) -> tuple[Scorer, ServingConfig]:
    """The scorer predict uses: ONNX Runtime when ``onnx`` is given (its JSON sidecar, or else the
    checkpoint, gives the serving config), eager PyTorch on ``checkpoint`` otherwise."""
    if onnx is None and checkpoint is None:
        raise ValueError("give a checkpoint, an ONNX model, or both")
    if onnx is not None:
        scorer = OnnxScorer(onnx, threads=threads)
        if sidecar_path(onnx).exists():
            config = scorer.config
        elif checkpoint is not None:
            config = load_served(checkpoint)[1]
        else:
            raise DataError(f"no serving config next to the ONNX model ({sidecar_path(onnx).name}); "
                            "pass the checkpoint too", path=str(onnx))
        return scorer, config.replace(max_length=max_length)
    student, config = load_served(checkpoint, max_length=max_length)
    return TorchScorer(student), config


__all__ = ["Scorer", "TorchScorer", "OnnxScorer", "load_served", "load_scorer"]
