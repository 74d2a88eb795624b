"""Structured pruning of the student's encoder (METHOD.md, the third paper: a smaller architecture cut
from the trained one): keep some of its transformer layers and shrink each kept layer's feed-forward
network (FFN) to its most important neurons.

    student.prune:
      num_layers: 3                 # layers kept (null: all)
      layer_selection: alternate    # alternate | bottom | top | [ids]
      intermediate_size: 768        # FFN neurons kept per layer (null: all)
      importance: magnitude         # how FFN neurons are ranked

``alternate`` keeps ``num_layers`` layers evenly spaced from the first to the last (6 -> 3:
layers 0, 2, 5; 6 -> 2: 0, 5); ``bottom`` the first ones, ``top`` the last ones; a list keeps those
ids (0-based, in the encoder's order). ``magnitude`` scores FFN neuron j of a layer as
``||W_in[j, :]||_2 * ||W_out[:, j]||_2`` (the weights into and out of it) and keeps the top
``intermediate_size`` (in their original order) with transformers' ``prune_linear_layer``.

The encoder's config is updated (``num_hidden_layers``, ``intermediate_size``), so the pruned encoder
saves with ``save_pretrained`` and loads back with ``from_pretrained`` as an ordinary, smaller model;
ONNX export and predict see nothing special. Heads and hidden width are not pruned (transformers 5
dropped ``prune_heads``). BERT-like encoders (``encoder.layer[i].intermediate.dense`` /
``.output.dense``: BERT, MiniLM, RoBERTa, ELECTRA, ...) are supported; others raise a ValueError.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

LAYER_SELECTIONS = ("alternate", "bottom", "top")
IMPORTANCES = ("magnitude",)
PRUNE_KEYS = ("num_layers", "layer_selection", "intermediate_size", "importance")


def select_layers(total: int, num_layers: int | None, selection: str | Sequence[int] = "alternate") -> list[int]:
    """The ids of the layers kept, ascending (see the module docstring); ValueError on bad input."""
    if not isinstance(selection, str):
        ids = [int(i) for i in selection]
        if not ids or len(set(ids)) != len(ids) or any(i < 0 or i >= total for i in ids):
            raise ValueError(f"student.prune.layer_selection: {list(selection)} must be distinct layer ids in "
                             f"[0, {total - 1}]")
        if num_layers is not None and int(num_layers) != len(ids):
            raise ValueError(f"student.prune: num_layers={num_layers} but layer_selection lists {len(ids)} layers")
        return sorted(ids)
    n = total if num_layers is None else int(num_layers)
    if not 1 <= n <= total:
        raise ValueError(f"student.prune.num_layers must be in [1, {total}] (the encoder has {total}), got {num_layers}")
    if selection == "bottom":
        return list(range(n))
    if selection == "top":
        return list(range(total - n, total))
    if selection == "alternate":
        if n == 1:
            return [0]
        return sorted({int(round(i * (total - 1) / (n - 1))) for i in range(n)})
    raise ValueError(f"student.prune.layer_selection: {selection!r} is not one of {LAYER_SELECTIONS} or a list of ids")


def ffn_importance(w_in: torch.Tensor, w_out: torch.Tensor, importance: str = "magnitude") -> torch.Tensor:
    """Score [I] of each FFN neuron from W_in [I, H] (into the neurons) and W_out [H, I] (out of them)."""
    if importance != "magnitude":
        raise ValueError(f"student.prune.importance: {importance!r} is not one of {IMPORTANCES}")
    return w_in.detach().float().norm(dim=1) * w_out.detach().float().norm(dim=0)


def _layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not all(
            isinstance(getattr(getattr(l, "intermediate", None), "dense", None), nn.Linear)
            and isinstance(getattr(getattr(l, "output", None), "dense", None), nn.Linear) for l in layers):
        raise ValueError(f"student.prune: {type(model).__name__} is not a BERT-like encoder "
                         "(encoder.layer[i].intermediate.dense / .output.dense); pruning supports those only")
    return layers


def check_prune(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The prune config as a plain dict with defaults; ValueError on unknown keys."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(PRUNE_KEYS))
    if unknown:
        raise ValueError(f"student.prune: unknown keys {unknown}; expected {list(PRUNE_KEYS)}")
    return {"num_layers": spec.get("num_layers"), "layer_selection": spec.get("layer_selection") or "alternate",
            "intermediate_size": spec.get("intermediate_size"), "importance": spec.get("importance") or "magnitude"}


def is_pruning(spec: Mapping[str, Any] | None) -> bool:
    """Whether a prune config removes anything at all (an empty one, or all nulls, keeps the encoder)."""
    s = check_prune(spec)
    return s["num_layers"] is not None or s["intermediate_size"] is not None or not isinstance(s["layer_selection"], str)


@torch.no_grad()
def prune_encoder(model: nn.Module, spec: Mapping[str, Any] | None) -> nn.Module:
    """Prune ``model`` (a Hugging Face BERT-like encoder) in place as ``spec`` says and update its
    config; returns it. A layer count or FFN size equal to the model's keeps it unchanged."""
    s = check_prune(spec)
    if not is_pruning(s):
        return model
    layers = _layers(model)
    keep = select_layers(len(layers), s["num_layers"], s["layer_selection"])
    model.encoder.layer = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.encoder.layer):  # attention modules record their index
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    size = s["intermediate_size"]
    if size is not None:
        current = int(model.config.intermediate_size)
        if not 1 <= int(size) <= current:
            raise ValueError(f"student.prune.intermediate_size must be in [1, {current}] (the encoder's FFN size), "
                             f"got {size}")
        for layer in model.encoder.layer:
            w_in, w_out = layer.intermediate.dense, layer.output.dense
            scores = ffn_importance(w_in.weight, w_out.weight, s["importance"])
            index = scores.topk(int(size)).indices.sort().values.to(w_in.weight.device)
            layer.intermediate.dense = prune_linear_layer(w_in, index, dim=0)
            layer.output.dense = prune_linear_layer(w_out, index, dim=1)
        model.config.intermediate_size = int(size)
    return model


__all__ = ["prune_encoder", "select_layers", "ffn_importance", "check_prune", "is_pruning", "LAYER_SELECTIONS",
           "IMPORTANCES", "PRUNE_KEYS"]
