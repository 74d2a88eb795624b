"""Loss composition: the ``LossTerm`` base class and ``WeightedLoss``, a weighted sum of named terms.

A config composes terms by name (``conf/loss/*.yaml``), so an ablation is one override:
``loss.terms.kd.weight=0`` switches a term off (it is then not even computed) and
``~loss.terms.kd`` removes it. Terms know tensors only: ``out`` is the student's output dict
(``logits [B,C]``, ``pooled [B,H]``, ``latent_pred [B,K,D]``, ``aug_logits``, ``aug_pooled``)
and ``batch`` the batch dict of ``lrkd.data.batch``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and batch (raised by
    the student and teacher training modules)."""


class LossInputError(LookupError):
    """A loss term cannot find an input it needs (a batch key or a student output)."""


def mean_over_rows(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of per-row loss ``values [B]`` over rows where ``mask [B] bool`` is true (all rows when
    ``None``); a batch reduction (token states are pooled by :func:`lrkd.encoders.mean_over_tokens`).

    With no valid row the result is a 0 that keeps a gradient path to ``values`` (so a step on a
    batch without, e.g., annotated rows still back-propagates cleanly, also under DDP).
    """
    if mask is None:
        return values.mean() if values.numel() else values.sum() * 0.0
    mask = mask.to(device=values.device, dtype=torch.bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(values.shape)}")
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp_min(1).to(values.dtype)


def zero_with_grad(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the autograd graph of ``tensors`` (for a loss with no valid row)."""
    return sum(t.sum() * 0.0 for t in tensors)


class LossTerm(nn.Module):
    """One named, weighted term of the training loss.

    Class attributes say what the term reads, so the student module knows what to compute:
    ``needs_annotations`` (teacher_probs / latent_targets / annotated from a teacher artefact) and
    ``needs_augmented_view`` (aug_logits / aug_pooled from the reasoning-augmented view).
    ``weight`` is the term's weight in ``WeightedLoss``; ``forward`` returns the *unweighted*
    ``{"loss": scalar, <sub-term>: scalar, ...}``.
    """

    needs_annotations: bool = False
    needs_augmented_view: bool = False
    name: str = "term"  # overwritten by WeightedLoss with the term's config name

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- helpers for subclasses: fetch inputs with an error that says how to fix the config ------
    def batch_annotation(self, batch: Mapping[str, Tensor], key: str) -> Tensor:
        """``batch[key]`` for a key that only a teacher annotation artefact provides."""
        if key not in batch:
            raise LossInputError(
                f"loss term {self.name!r} needs batch[{key!r}] from a teacher annotation artefact, "
                f"but the batch has none: set data.annotations=<artefact dir> "
                f"(or switch the term off with loss.terms.{self.name}.weight=0)")
        return batch[key]

    def output(self, out: Mapping[str, Tensor], key: str, how_to_fix: str) -> Tensor:
        """``out[key]``, a student output; ``how_to_fix`` completes the error message."""
        if key not in out:
            raise LossInputError(f"loss term {self.name!r} needs the student output {key!r}: {how_to_fix}")
        return out[key]

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class WeightedLoss(nn.Module):
    """``total = sum_i w_i * L_i`` over the terms with ``w_i != 0``.

    terms: ``{name: LossTerm}``; a ``DictConfig`` of instantiated terms (what Hydra passes) works,
           and a ``None`` value (``loss.terms.kd=null``) drops that term. Terms live in an
           ``nn.ModuleDict`` so any parameters they have are trained and moved with the model.
    """

    def __init__(self, terms: Mapping[str, LossTerm | None]):
        super().__init__()
        kept: dict[str, LossTerm] = {}
        for name in list(terms.keys()):
            term = terms[name]
            if term is None:
                continue
            if not isinstance(term, LossTerm):
                raise TypeError(f"loss term {name!r} must be a lrkd.losses.LossTerm, got {type(term).__name__}")
            term.name = str(name)
            kept[str(name)] = term
        self.terms = nn.ModuleDict(kept)
        if not self.active_terms:
            raise ValueError(f"the loss has no active term (terms {list(kept)} all have weight 0)")

    @property
    def active_terms(self) -> list[str]:
        """Names of the terms with a non-zero weight, in config order."""
        return [name for name, term in self.terms.items() if term.weight != 0]

    @property
    def needs_augmented_view(self) -> bool:
        return any(self.terms[n].needs_augmented_view for n in self.active_terms)

    @property
    def needs_annotations(self) -> bool:
        return any(self.terms[n].needs_annotations for n in self.active_terms)

    def set_class_counts(self, counts, num_classes: int | None = None) -> None:
        """Give the train split's gold label counts [C] to every term with a ``class_weight``
        option (``lrkd.losses.weights``); terms with ``class_weight: balanced`` resolve it here."""
        for term in self.terms.values():
            if hasattr(term, "set_class_counts"):
                term.set_class_counts(counts, num_classes)

    def set_label_set(self, gains, relevant_up_to: int) -> None:
        """Give the data's gains [C] and relevance cut to every term that scores by them (``rank_kd``)."""
        for term in self.terms.values():
            if hasattr(term, "set_label_set"):
                term.set_label_set(gains, relevant_up_to)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns ``(total, logs)``: ``total`` a scalar with a grad path, ``logs`` the detached
        unweighted ``{name: loss, "name/sub": sub-term}`` of each active term."""
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        for name in self.active_terms:
            term = self.terms[name]
            parts = term(out, batch)
            loss = parts["loss"]
            total = term.weight * loss if total is None else total + term.weight * loss
            logs[name] = loss.detach()
            for sub, value in parts.items():
                if sub != "loss":
                    logs[f"{name}/{sub}"] = value.detach()
        if total is None:
            raise ValueError("the loss has no active term (all weights are 0)")
        return total, logs

    def extra_repr(self) -> str:
        return f"active={self.active_terms}"
