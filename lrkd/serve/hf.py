"""The student in Hugging Face ``save_pretrained`` form, so that other tools can load it.

A directory:

    config.json, model.safetensors     the encoder (``encoder.save_pretrained``): ``AutoModel``
                                       loads it alone, e.g. for embeddings (BERT-like models then
                                       add an untrained pooler head; lrkd pools itself and has none)
    tokenizer files                    the tokenizer the student reads (``tokenizer.save_pretrained``)
    lrkd_head.safetensors              the extractor and classifier weights (keys ``extractor.*``,
                                       ``classifier.*``, as in the StudentModule's state dict)
    lrkd_config.json                   format_version, the extractor config (``_target_`` and sizes),
                                       pooling, classifier dropout, the label set, perspectives, the
                                       serving config (max length, text fields, and the fitted
                                       decision rule when the student has a tuned one) and
                                       parameter counts

:func:`load_student_pretrained` rebuilds a :class:`~lrkd.student.module.StudentModule` from it
(encoder from the directory, heads from ``lrkd_head.safetensors``) with the same logits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lrkd.serve.predict import ServingConfig, load_tokenizer

HEAD_WEIGHTS = "lrkd_head.safetensors"
HEAD_CONFIG = "lrkd_config.json"
FORMAT_VERSION = 1
HEAD_PARTS = ("extractor", "classifier")
# The loss of a reloaded student: serving needs none, but the module is built with one.
SERVING_LOSS = {"_target_": "lrkd.losses.WeightedLoss", "terms": {"ce": {"_target_": "lrkd.losses.CETerm",
                                                                         "weight": 1.0}}}


def is_student_pretrained(path: str | os.PathLike) -> bool:
    return (Path(path) / HEAD_CONFIG).is_file()


def save_student_pretrained(module, out_dir: str | os.PathLike, *, max_length: int | None = None,
                            text_fields=None) -> Path:
    """Write ``module`` (a StudentModule) to ``out_dir`` in the form described above.

    max_length, text_fields: the serving config to record (default: what the module's
    hyper-parameters record; see :meth:`ServingConfig.from_hparams`)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hp = module.hparams
    serving = ServingConfig.from_hparams(hp, max_length=max_length).with_decision_of(module)
    if text_fields is not None:
        serving = serving.replace(text_fields=tuple(text_fields))
    module.encoder.save_pretrained(out, safe_serialization=True)
    load_tokenizer(serving.tokenizer).save_pretrained(out)
    head = {f"{part}.{k}": v.detach().contiguous().cpu()
            for part in HEAD_PARTS for k, v in getattr(module, part).state_dict().items()}
    save_file(head, str(out / HEAD_WEIGHTS), metadata={"format": "pt", "lrkd_format_version": str(FORMAT_VERSION)})
    encoder_hp = dict(hp["encoder"])
    config = {
        "format_version": FORMAT_VERSION,
        "extractor": dict(hp["extractor"]),
        "pooling": encoder_hp.get("pooling", "mean"),
        "classifier_dropout": float(encoder_hp.get("classifier_dropout", 0.1)),
        "trust_remote_code": bool(encoder_hp.get("trust_remote_code", False)),
        "label_set": serving.to_dict()["label_set"],
        "perspectives": list(module.perspectives),
        "serving": {**serving.to_dict(), "tokenizer": None},  # the tokenizer is this directory
        "source_encoder": encoder_hp,
        "parameter_counts": module.parameter_counts(),
    }
    (out / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _read_config(path: Path) -> dict:
    if not is_student_pretrained(path):
        from lrkd.data.schema import DataError

        raise DataError(f"not a saved student: no {HEAD_CONFIG}", path=str(path))
    config = json.loads((path / HEAD_CONFIG).read_text())
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path / HEAD_CONFIG}: format_version {config['format_version']} is newer than "
                         f"this lrkd reads ({FORMAT_VERSION})")
    return config


def load_serving_config(path: str | os.PathLike) -> ServingConfig:
    """The serving config of a saved student (its tokenizer is the directory itself)."""
    path = Path(path)
    serving = dict(_read_config(path)["serving"])
    serving["tokenizer"] = str(path)
    return ServingConfig.from_dict(serving)


def load_student_pretrained(path: str | os.PathLike, map_location: str = "cpu"):
    """A :class:`~lrkd.student.module.StudentModule` (eval mode) from a directory written by
    :func:`save_student_pretrained`; its ``predict_logits`` equals the saved module's."""
    from safetensors.torch import load_file

    from lrkd.student.module import StudentModule

    path = Path(path)
    config = _read_config(path)
    encoder = {"name_or_path": str(path), "config": None, "tokenizer": str(path), "pooling": config["pooling"],
               "dropout": None, "classifier_dropout": config["classifier_dropout"],
               "trust_remote_code": config.get("trust_remote_code", False)}
    data_spec = {"label_set": config["label_set"], "perspectives": config["perspectives"], "latent_dim": 0,
                 "has_annotations": False, "has_relevance": False}
    module = StudentModule(encoder=encoder, extractor=config["extractor"], loss=SERVING_LOSS, optimizer={},
                           data_spec=data_spec, decision=config["serving"].get("decision"))
    weights = load_file(str(path / HEAD_WEIGHTS), device=map_location)
    for part in HEAD_PARTS:
        prefix = part + "."
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        getattr(module, part).load_state_dict(state, strict=True)
    unknown = [k for k in weights if not k.startswith(tuple(p + "." for p in HEAD_PARTS))]
    if unknown:
        raise ValueError(f"{path / HEAD_WEIGHTS}: unexpected tensors {unknown[:5]}")
    return module.to(map_location).eval()


__all__ = ["save_student_pretrained", "load_student_pretrained", "load_serving_config", "is_student_pretrained",
           "HEAD_WEIGHTS", "HEAD_CONFIG", "FORMAT_VERSION"]
