"""What serving needs besides the weights, so that it reads pairs exactly as training did: the
:class:`ServingConfig`, and its JSON sidecar beside an exported ONNX model (``student.onnx`` ->
``student.json``: the config plus ``format_version``, ``inputs``, ``outputs``, ``precision``)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from lrkd.data.batch import INPUT_KEYS
from lrkd.schema import DataError, LabelSet
from lrkd.evaluation.decision import rule_from_dict
from lrkd.utils import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128
OUTPUT_NAMES = ("logits", "probs")
SIDECAR_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ServingConfig:
    """What serving needs besides the weights, so that it reads pairs exactly as training did.

    label_set:    the grades (class i of the model = ``label_set.names[i]``).
    tokenizer:    hub id or local path of the tokenizer (resolved with ``resolve_model_path``).
    max_length:   tokens per pair, specials included (the training data's ``max_length``).
    text_fields:  the further item-text columns training showed after the title, in order;
                  None when the checkpoint does not record them.
    perspectives: the extractor's perspective names (informative).
    decision:     the fitted decision rule (:mod:`lrkd.evaluation.decision` dict: kind, score, metric,
                  score_values, thresholds), None for argmax; it decides ``grade``.
    """

    label_set: LabelSet
    tokenizer: str
    max_length: int = DEFAULT_MAX_LENGTH
    text_fields: tuple[str, ...] | None = None
    perspectives: tuple[str, ...] = ()
    decision: Mapping | None = None

    def to_dict(self) -> dict:
        out = {"label_set": self.label_set.to_dict(),
               "tokenizer": self.tokenizer, "max_length": int(self.max_length),
               "text_fields": None if self.text_fields is None else list(self.text_fields),
               "perspectives": list(self.perspectives)}
        if self.decision is not None and self.decision.get("kind", "argmax") != "argmax":
            out["decision"] = dict(self.decision)
        return out

    def decision_rule(self):
        """The :mod:`lrkd.evaluation.decision` rule that maps probabilities to ``grade`` (ArgmaxRule by default)."""
        return rule_from_dict(self.decision, self.label_set)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ServingConfig":
        fields = d.get("text_fields")
        return cls(label_set=LabelSet.from_config(d["label_set"]), tokenizer=str(d["tokenizer"]),
                   max_length=int(d.get("max_length") or DEFAULT_MAX_LENGTH),
                   text_fields=None if fields is None else tuple(fields),
                   perspectives=tuple(d.get("perspectives") or ()), decision=d.get("decision"))

    @classmethod
    def from_hparams(cls, hparams: Mapping, max_length: int | None = None,
                     decision: Mapping | None = None) -> "ServingConfig":
        """From a student checkpoint's hyper-parameters (``encoder``, ``data_spec``). ``max_length``
        overrides the stored one; without either, :data:`DEFAULT_MAX_LENGTH`. ``decision``: the
        fitted rule's dict (:func:`lrkd.student.checkpoint.decision_of`), None for argmax."""
        spec = dict(hparams["data_spec"])
        encoder = dict(hparams["encoder"])
        stored = spec.get("max_length") or encoder.get("max_length")
        if max_length is None and stored is None:
            log.warning("the checkpoint does not record the training max_length; using %d "
                        "(pass --max-length to change it)", DEFAULT_MAX_LENGTH)
        tokenizer = encoder.get("tokenizer") or encoder.get("name_or_path")
        if not tokenizer:
            raise ValueError("the checkpoint's encoder hyper-parameters name no tokenizer")
        fields = spec.get("text_fields")
        return cls(label_set=LabelSet.from_config(spec["label_set"]), tokenizer=str(tokenizer),
                   max_length=int(max_length or stored or DEFAULT_MAX_LENGTH),
                   text_fields=None if fields is None else tuple(fields),
                   perspectives=tuple(spec.get("perspectives") or ()), decision=decision)

    @classmethod
    def of_student(cls, loaded, max_length: int | None = None) -> "ServingConfig":
        """The serving config of a student read by :func:`lrkd.student.checkpoint.load_student`: the
        one a ``save_pretrained`` directory recorded (its tokenizer is the directory itself), else
        from the ``.ckpt``'s hyper-parameters and fitted decision rule. ``max_length`` overrides the
        recorded one."""
        if loaded.serving is not None:
            return cls.from_dict({**loaded.serving, "tokenizer": str(loaded.path)}).replace(max_length=max_length)
        return cls.from_hparams(loaded.hparams, max_length=max_length, decision=loaded.decision)

    def with_decision_of(self, module) -> "ServingConfig":
        """This config with ``module``'s decision rule (a fitted tuned rule; argmax records none)."""
        rule = module.decision_rule() if hasattr(module, "decision_rule") else None
        if rule is None or rule.kind == "argmax":
            return self
        return self.replace(decision=rule.to_dict())

    def replace(self, **changes) -> "ServingConfig":
        """A copy with the given fields changed (None leaves a field as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """``student.onnx`` -> ``student.json`` (the serving config beside the model)."""
    return Path(onnx_path).with_suffix(".json")


def write_sidecar(onnx_path: str | os.PathLike, config: ServingConfig, **extra) -> Path:
    """Write the sidecar of ``onnx_path``: ``config`` plus the graph's inputs/outputs and ``extra``."""
    payload = {"format_version": SIDECAR_FORMAT_VERSION, "inputs": list(INPUT_KEYS),
               "outputs": list(OUTPUT_NAMES), **config.to_dict(), **extra}
    return write_json_atomic(sidecar_path(onnx_path), payload)


def read_sidecar(onnx_path: str | os.PathLike) -> dict:
    """The sidecar of ``onnx_path`` as a dict; DataError when it is missing or not JSON."""
    path = sidecar_path(onnx_path)
    if not path.exists():
        raise DataError(f"no serving config {path.name} beside the ONNX model", path=str(onnx_path))
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"the serving config is not JSON: {e}", path=str(path)) from None


__all__ = ["ServingConfig", "DEFAULT_MAX_LENGTH", "OUTPUT_NAMES", "sidecar_path", "write_sidecar", "read_sidecar"]
