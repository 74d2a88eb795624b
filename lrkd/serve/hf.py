"""The student in Hugging Face ``save_pretrained`` form, so that other tools can load it: the
directory of :class:`lrkd.student.model.RelevanceStudent` (encoder, tokenizer, ``lrkd_head``
weights, ``lrkd_config.json``) with the serving config recorded in it (max length, text fields,
and the fitted decision rule when the student has a tuned one). It loads, as a ``.ckpt`` does,
with :func:`lrkd.student.checkpoint.load_student`."""
from __future__ import annotations

import os
from pathlib import Path

from lrkd.serve.config import ServingConfig
from lrkd.student.model import FORMAT_VERSION, HEAD_CONFIG, HEAD_WEIGHTS


def save_student_pretrained(model, out_dir: str | os.PathLike, *, max_length: int | None = None,
                            text_fields=None, serving: ServingConfig | None = None) -> Path:
    """Write ``model`` (a RelevanceStudent, or a StudentModule: its student and decision rule) to
    ``out_dir``. ``serving``: the serving config to record; by default the StudentModule's
    (:meth:`ServingConfig.from_hparams`), with ``max_length`` and ``text_fields`` overriding it."""
    student = model.student if hasattr(model, "student") else model
    if serving is None:
        if not hasattr(model, "hparams"):
            raise ValueError("give the serving config of a RelevanceStudent (serving=...)")
        serving = ServingConfig.from_hparams(model.hparams, max_length=max_length).with_decision_of(model)
    serving = serving.replace(max_length=max_length)
    if text_fields is not None:
        serving = serving.replace(text_fields=tuple(text_fields))
    return student.save_pretrained(out_dir, serving=serving.to_dict())


__all__ = ["save_student_pretrained", "HEAD_WEIGHTS", "HEAD_CONFIG", "FORMAT_VERSION"]
