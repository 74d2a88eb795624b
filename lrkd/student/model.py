"""RelevanceStudent: the served student, one ``nn.Module`` that training, export, predict and the
Hugging Face form all use.

    encoder f      a Hugging Face encoder (lrkd.student.encoder), token states [B, L, H]
    pooling        h [B, P]: ``mean`` | ``cls`` (P = H) or ``match`` (P = 2H+1)
    extractor g    z [B, K, Dz] (lrkd.student.extractor; none for ``extractor=none``)
    classifier     logits [B, C] from [h; z_1..z_K]

It is built from plain config dicts (``conf/student/*.yaml``, ``conf/extractor/*.yaml``), the
label set and the perspective names, and knows nothing of losses, metrics or optimizers: the
training wrapper is :class:`lrkd.student.module.StudentModule`.

The ``save_pretrained`` form (a directory):

    config.json, model.safetensors     the encoder (``encoder.save_pretrained``): ``AutoModel``
                                       loads it alone, e.g. for embeddings
    tokenizer files                    the tokenizer the student reads
    lrkd_head.safetensors              the extractor and classifier weights (keys ``extractor.*``,
                                       ``classifier.*``)
    lrkd_config.json                   format_version, the extractor config (``_target_`` and sizes),
                                       pooling, classifier dropout, the label set, perspectives, the
                                       serving config it was given (lrkd.serve.config) and the
                                       parameter counts
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file
from torch import nn

from lrkd.schema import DataError, LabelSet
from lrkd.student.encoder import count_parameters, load_encoder, load_tokenizer, match_features, pool, pooled_dim
from lrkd.student.prune import prune_encoder
from lrkd.utils import plain, write_json_atomic

HEAD_WEIGHTS = "lrkd_head.safetensors"
HEAD_CONFIG = "lrkd_config.json"
FORMAT_VERSION = 1
HEAD_PARTS = ("extractor", "classifier")


class RelevanceStudent(nn.Module):
    """encoder + extractor + classifier (see the module docstring).

    encoder:      the student config (``name_or_path`` | ``config``, ``tokenizer``, ``pooling``,
                  ``dropout``, ``classifier_dropout``, ``trust_remote_code``, ``gradient_checkpointing``,
                  ``prune``: lrkd.student.prune, applied when the encoder is loaded)
    extractor:    ``_target_`` of a LatentExtractor and its sizes
    label_set:    a :class:`LabelSet` or its dict (``LabelSet.to_dict()``): C = its classes
    perspectives: the K perspective names (one latent vector each)
    """

    def __init__(self, encoder: Mapping, extractor: Mapping, label_set: LabelSet | Mapping,
                 perspectives: Sequence[str]):
        super().__init__()
        encoder, extractor = plain(dict(encoder)), plain(dict(extractor))
        self.label_set = label_set if isinstance(label_set, LabelSet) else LabelSet.from_config(label_set)
        self.perspectives = tuple(perspectives)
        self.encoder_config, self.extractor_config = encoder, extractor
        self.pooling = encoder.get("pooling", "mean")
        self.encoder = load_encoder(name_or_path=encoder.get("name_or_path"), config=encoder.get("config"),
                                    tokenizer=encoder.get("tokenizer"), dropout=encoder.get("dropout"),
                                    trust_remote_code=bool(encoder.get("trust_remote_code", False)))
        # student.prune: fewer layers, smaller FFNs (lrkd.student.prune); the config follows, so the
        # save_pretrained form holds the pruned encoder and loads without pruning again
        prune_encoder(self.encoder, encoder.get("prune"))
        if encoder.get("gradient_checkpointing"):  # recompute activations in backward: less memory
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = int(self.encoder.config.hidden_size)
        self.extractor = instantiate(extractor, hidden_size=hidden, num_perspectives=len(self.perspectives))
        self.classifier = nn.Sequential(nn.Dropout(float(encoder.get("classifier_dropout", 0.1))),
                                        nn.Linear(pooled_dim(hidden, self.pooling) + int(self.extractor.output_dim),
                                                  self.label_set.num_classes))
        # from_pretrained returns modules in eval mode; a new student trains by default
        self.train()

    @property
    def tokenizer_name(self) -> str | None:
        """The tokenizer the student reads (hub id or path)."""
        return self.encoder_config.get("tokenizer") or self.encoder_config.get("name_or_path")

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; ``inference`` is their sum (what the served student holds)."""
        counts = {"encoder": count_parameters(self.encoder), "extractor": count_parameters(self.extractor),
                  "classifier": count_parameters(self.classifier)}
        counts["inference"] = sum(counts.values())
        return counts

    def features(self, input_ids, attention_mask, token_type_ids=None):
        """-> (pooled h [B, P], z [B, K, Dz] | None, logits [B, C])."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        states = self.encoder(**kwargs).last_hidden_state
        if self.pooling == "match":
            h = match_features(states, attention_mask, token_type_ids)
        else:
            h = pool(states, attention_mask, self.pooling)
        z = self.extractor(states, attention_mask)
        features = h if z is None else torch.cat([h, z.flatten(1)], dim=-1)
        return h, z, self.classifier(features)

    def predict_logits(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Inference: class logits [B, C] of (input_ids, attention_mask, token_type_ids) [B, L]."""
        return self.features(input_ids, attention_mask, token_type_ids)[2]

    forward = predict_logits

    # ------------------------------------------------------------------------- save_pretrained
    def save_pretrained(self, out_dir: str | os.PathLike, serving: Mapping | None = None) -> Path:
        """Write the directory of the module docstring; ``serving``: the serving config to record
        (``ServingConfig.to_dict()``; its tokenizer is the directory itself)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out, safe_serialization=True)
        load_tokenizer(self.tokenizer_name, bool(self.encoder_config.get("trust_remote_code", False))).save_pretrained(out)
        head = {f"{part}.{k}": v.detach().contiguous().cpu()
                for part in HEAD_PARTS for k, v in getattr(self, part).state_dict().items()}
        save_file(head, str(out / HEAD_WEIGHTS),
                  metadata={"format": "pt", "lrkd_format_version": str(FORMAT_VERSION)})
        config = {
            "format_version": FORMAT_VERSION,
            "extractor": dict(self.extractor_config),
            "pooling": self.pooling,
            "classifier_dropout": float(self.encoder_config.get("classifier_dropout", 0.1)),
            "trust_remote_code": bool(self.encoder_config.get("trust_remote_code", False)),
            "label_set": self.label_set.to_dict(),
            "perspectives": list(self.perspectives),
            "serving": {**dict(serving or {}), "tokenizer": None},
            "source_encoder": dict(self.encoder_config),
            "parameter_counts": self.parameter_counts(),
        }
        write_json_atomic(out / HEAD_CONFIG, config)
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "RelevanceStudent":
        """The student (eval mode) saved in ``path`` by :meth:`save_pretrained`; same logits."""
        path = Path(path)
        config = read_pretrained_config(path)
        encoder = {"name_or_path": str(path), "config": None, "tokenizer": str(path), "pooling": config["pooling"],
                   "dropout": None, "classifier_dropout": config["classifier_dropout"],
                   "trust_remote_code": config.get("trust_remote_code", False)}
        student = cls(encoder, config["extractor"], config["label_set"], config["perspectives"])
        weights = load_file(str(path / HEAD_WEIGHTS), device=str(map_location))
        unknown = [k for k in weights if not k.startswith(tuple(p + "." for p in HEAD_PARTS))]
        if unknown:
            raise DataError(f"unexpected tensors {unknown[:5]}", path=str(path / HEAD_WEIGHTS))
        for part in HEAD_PARTS:
            prefix = part + "."
            getattr(student, part).load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                                                    if k.startswith(prefix)}, strict=True)
        return student.to(map_location).eval()


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by :meth:`RelevanceStudent.save_pretrained`."""
    return (Path(path) / HEAD_CONFIG).is_file()


def read_pretrained_config(path: str | os.PathLike) -> dict[str, Any]:
    """``lrkd_config.json`` of a saved student; DataError when absent, ValueError when newer."""
    path = Path(path)
    if not is_pretrained_dir(path):
        raise DataError(f"not a saved student: no {HEAD_CONFIG}", path=str(path))
    config = json.loads((path / HEAD_CONFIG).read_text())
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path / HEAD_CONFIG}: format_version {config['format_version']} is newer than "
                         f"this lrkd reads ({FORMAT_VERSION})")
    return config


__all__ = ["RelevanceStudent", "is_pretrained_dir", "read_pretrained_config", "HEAD_WEIGHTS", "HEAD_CONFIG",
           "FORMAT_VERSION", "HEAD_PARTS"]
