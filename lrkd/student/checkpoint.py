"""Loading a trained student, the one way (:func:`load_student`): a Lightning ``.ckpt`` written by
the student stage (read without the training module: no Lightning import) or a ``save_pretrained``
directory, as the served :class:`~lrkd.student.model.RelevanceStudent` with what its file records
beside the weights (hyper-parameters and fitted decision rule, or the serving config).

Layout of the ``state_dict``: ``student.encoder.*``, ``student.extractor.*``,
``student.classifier.*`` (the RelevanceStudent) and training-only heads (``latent_projection.*``).
Checkpoints written before the RelevanceStudent existed (up to commit d59ad6a) hold
``encoder.*``, ``extractor.*`` and ``classifier.*`` at the top: :func:`upgrade_state_dict` moves
them, for this reader and for ``StudentModule.load_from_checkpoint`` alike.

Hyper-parameters name classes by dotted path (``_target_``); those of modules that moved since
(:data:`MOVED_TARGETS`) are read under their new names (:func:`upgrade_targets`).

Files are loaded with ``torch.load(weights_only=True)`` only. A file that is not a checkpoint, is
truncated, or holds objects other than tensors and plain containers raises
:class:`CheckpointError` naming the file and what was expected.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrkd.schema import DataError, LabelSet
from lrkd.evaluation.decision import rule_from_dict
from lrkd.student.model import RelevanceStudent, is_pretrained_dir, read_pretrained_config

STUDENT_PREFIX = "student."
LEGACY_PREFIXES = ("encoder.", "extractor.", "classifier.")
DECISION_CHECKPOINT_KEY = "lrkd_decision"
HPARAMS_KEY = "hyper_parameters"
EXPECTED = ("a student checkpoint: a Lightning .ckpt file written by lrkd's student stage (keys state_dict and "
            "hyper_parameters with encoder, extractor and data_spec), or a save_pretrained directory")


# dotted-path prefixes of modules that moved (issue 21), as old checkpoints' hyper-parameters name them
MOVED_TARGETS = {"lrkd.optim.": "lrkd.lightning.optim.", "lrkd.callbacks.": "lrkd.lightning.callbacks."}


class CheckpointError(DataError):
    """A file given as a student checkpoint is not one (or is damaged)."""


def upgrade_state_dict(state: MutableMapping[str, Any], prefix: str = "") -> MutableMapping[str, Any]:
    """Move the keys of the pre-RelevanceStudent layout (``<prefix>encoder.*`` ...) to
    ``<prefix>student.*``, in place; returns ``state``."""
    for key in [k for k in state if k.startswith(tuple(prefix + p for p in LEGACY_PREFIXES))]:
        state[prefix + STUDENT_PREFIX + key[len(prefix):]] = state.pop(key)
    return state


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A student checkpoint's dict (``weights_only=True``); CheckpointError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("checkpoint not found", path=str(path))
    if path.is_dir():
        hint = (" (a DeepSpeed checkpoint: convert it with `lrkd zero-to-fp32` first)"
                if (path / "latest").is_file() else "")
        raise CheckpointError(f"a directory, not {EXPECTED}{hint}", path=str(path))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False: never load a foreign pickle that way
        raise CheckpointError(f"it holds Python objects other than tensors and plain containers, so it was not "
                              f"written by lrkd; expected {EXPECTED}", path=str(path)) from None
    except Exception as e:  # torch raises many types on bytes it cannot read (RuntimeError, EOFError, IndexError, ...)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"not a readable PyTorch checkpoint (truncated or another format: {reason}); "
                              f"expected {EXPECTED}", path=str(path)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"no state_dict in it (found {found}); expected {EXPECTED}", path=str(path))
    hparams = checkpoint.get(HPARAMS_KEY)
    missing = [k for k in ("encoder", "extractor", "data_spec") if not isinstance(hparams, dict) or k not in hparams]
    if missing:
        raise CheckpointError(f"its hyper_parameters lack {missing}: a checkpoint of another model? "
                              f"Expected {EXPECTED}", path=str(path))
    checkpoint[HPARAMS_KEY] = upgrade_targets(hparams)
    return checkpoint


def decision_of(checkpoint: dict) -> dict | None:
    """The fitted decision rule of a checkpoint as a dict (lrkd.evaluation.decision), None for argmax."""
    hparams = checkpoint[HPARAMS_KEY]
    configured = hparams.get("decision") or {}
    if configured.get("kind", "argmax") == "argmax":
        return None
    label_set = LabelSet.from_config(hparams["data_spec"]["label_set"])
    saved = checkpoint.get(DECISION_CHECKPOINT_KEY) or {}
    return rule_from_dict({**configured, **saved}, label_set).to_dict()


def upgrade_targets(node: Any) -> Any:
    """``node`` (plain hyper-parameters) with every ``_target_`` of a moved module (:data:`MOVED_TARGETS`)
    under its new dotted path; other values as they are."""
    if isinstance(node, dict):
        out = {k: upgrade_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_TARGETS.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node


@dataclass(frozen=True)
class LoadedStudent:
    """A student read by :func:`load_student`: ``model`` (a RelevanceStudent in eval mode) and what
    its file records beside the weights. A ``.ckpt`` gives ``hparams`` (the student module's
    hyper-parameters) and ``decision`` (its fitted decision rule as a dict, None for argmax); a
    ``save_pretrained`` directory gives ``serving`` (the serving config it was saved with)."""

    model: RelevanceStudent
    path: Path
    hparams: dict | None = None
    decision: dict | None = None
    serving: dict | None = None


def load_student(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedStudent:
    """The one way to load a trained student: from a student ``.ckpt`` (``weights_only``; older
    layouts upgraded) or a ``save_pretrained`` directory. Anything else raises
    :class:`CheckpointError` (a :class:`~lrkd.schema.DataError`) naming the file and what was expected."""
    path = Path(path)
    if path.is_dir() and is_pretrained_dir(path):
        return LoadedStudent(RelevanceStudent.from_pretrained(path, map_location=map_location), path,
                             serving=dict(read_pretrained_config(path)["serving"]))
    checkpoint = read_checkpoint(path, map_location)
    hparams = checkpoint[HPARAMS_KEY]
    spec = hparams["data_spec"]
    student = RelevanceStudent(hparams["encoder"], hparams["extractor"], spec["label_set"], spec["perspectives"])
    state = upgrade_state_dict(dict(checkpoint["state_dict"]))
    own = {k[len(STUDENT_PREFIX):]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
    try:
        student.load_state_dict(own, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"its weights do not fit the student its hyper-parameters describe (expected the "
                              f"encoder, extractor and classifier weights of that student): "
                              f"{str(e).splitlines()[0]}", path=str(path)) from None
    return LoadedStudent(student.to(map_location).eval(), path, hparams=hparams, decision=decision_of(checkpoint))


__all__ = ["load_student", "LoadedStudent", "CheckpointError", "read_checkpoint", "upgrade_state_dict",
           "upgrade_targets", "decision_of", "STUDENT_PREFIX", "DECISION_CHECKPOINT_KEY", "MOVED_TARGETS"]
