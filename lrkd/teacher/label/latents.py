"""The latent targets of a teacher artefact, from the teacher's readings.

Two kinds (``latent``): ``decision``, the judgement reading's decision state (one last-layer state
per pair, the same target for every perspective), and ``rationale``, per perspective the teacher's
mean last-layer state over that perspective's rationale (:class:`lrkd.teacher.label.readers.
RationaleReader`; only pairs with rationales have them). Either is projected by one PCA fitted on all
the states written (:func:`lrkd.teacher.label.head.pca_projection`: unit mean variance), so the
student's targets are small and the perspectives share one space.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lrkd.teacher.label.head import pca_projection

LATENT_KINDS = {"decision": "decision_state", "rationale": "rationale_states"}  # config name -> manifest name


def rationale_states(written, keys: Sequence[tuple[str, str]], perspectives: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(has [n] bool: which of ``keys`` have rationales in ``written`` (a
    :class:`lrkd.teacher.label.score_pool.Reads` of rationales), their states [m, K, D] in the order of
    ``perspectives``, which must all be in ``written``)."""
    order = list(written.rationales)
    missing = [p for p in perspectives if p not in order]
    if missing:
        raise ValueError(f"the rationales hold no perspective {missing} (they hold {order})")
    index = written.index()
    has = np.asarray([tuple(k) in index for k in keys], dtype=bool)
    rows = [index[tuple(k)] for k, h in zip(keys, has) if h]
    return has, written.latents[rows][:, [order.index(p) for p in perspectives], :]


def project_latents(states: np.ndarray, num_perspectives: int,
                    latent_dim: int | None) -> tuple[np.ndarray, dict | None]:
    """``states`` [n, S, D] (S = 1: one state shared by every perspective, or S = K) -> targets
    [n, K, d] float32: one PCA over all n·S states to ``latent_dim`` components (none when there are
    no more states than that, or ``latent_dim`` is null). Returns (targets, {"dim",
    "explained_variance"} or None)."""
    n, s, d = states.shape
    if s not in (1, num_perspectives):
        raise ValueError(f"states hold {s} vectors per pair; want 1 or {num_perspectives}")
    flat, info = states.reshape(-1, d).astype(np.float64), None
    if latent_dim and len(flat) > int(latent_dim):
        mean, components, explained = pca_projection(flat, int(latent_dim))
        flat = (flat - mean) @ components
        info = {"dim": int(components.shape[1]), "explained_variance": explained}
    targets = flat.reshape(n, s, -1)
    if s == 1:
        targets = np.repeat(targets, num_perspectives, axis=1)
    return targets.astype(np.float32), info


__all__ = ["LATENT_KINDS", "rationale_states", "project_latents"]
