"""Lightning callbacks of lrkd (the rest come from Lightning itself: checkpoints, early stopping)."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Saves the torch, numpy and Python RNG states in every checkpoint and restores them on resume,
    so a resumed run draws the same dropout masks as an uninterrupted one.

    Stored as tensors and plain ints only, so checkpoints still load with ``weights_only=True``.
    The states are applied in ``on_train_start``, not when the checkpoint is read: building the
    train loader's iterator after the restore draws from the global torch RNG, and an
    uninterrupted run made that draw before the checkpoint was written.
    """

    def __init__(self):
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        py_version, py_state, py_gauss = random.getstate()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": int(py_version), "state": list(py_state),
                       "gauss": None if py_gauss is None else float(py_gauss)},
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_states")

    def on_train_start(self, trainer, pl_module) -> None:
        states, self._pending = self._pending, None
        if not states:
            return
        torch.set_rng_state(states["torch"])
        n = states["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        p = states["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


__all__ = ["RNGStateCheckpoint"]
