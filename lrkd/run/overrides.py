"""Hydra override lines and the keys a sweep declares as swept, read with Hydra's own grammar
(:mod:`lrkd.report` groups jobs by them; :mod:`lrkd.run.wandb_run` names W&B runs by them)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

MULTIRUN_FILE = "multirun.yaml"     # Hydra's copy of the sweep's config, at the sweep dir's root


def parse_override(line: str) -> tuple[str, str]:
    """One override line -> (key, value as written). ``+a.b=1`` -> ("a.b", "1"); ``~a`` ->
    ("a", "~"); ``extractor@x=mlp`` -> ("extractor@x", "mlp"). Uses Hydra's own grammar."""
    override = OverridesParser.create().parse_override(line)
    key = override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
    if override.is_delete():
        return key, "~"
    return key, override.get_value_element_as_str()


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """Override lines -> {key: value}, in order (a later line wins)."""
    return dict(parse_override(str(line)) for line in lines)


def declared_sweep_keys(master: DictConfig | Mapping | None) -> list[str]:
    """The keys a sweep's config declares as swept: ``hydra.sweeper.params`` and the command line's
    sweep overrides (``seed=1,2``, ``lr=interval(...)``), from ``multirun.yaml``'s config."""
    if master is None:
        return []

    params = OmegaConf.select(master, "hydra.sweeper.params", default=None) or {}
    keys = [str(k) for k in params]
    parser = OverridesParser.create()
    for line in OmegaConf.select(master, "hydra.overrides.task", default=None) or []:
        override = parser.parse_override(str(line))
        key = override.key_or_group
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
    return keys


def load_multirun_config(sweep_dir: str | Path) -> DictConfig | None:
    """``<sweep_dir>/multirun.yaml`` (the config Hydra's sweeper saved before launching), or None."""
    path = Path(sweep_dir) / MULTIRUN_FILE
    return OmegaConf.load(path) if path.is_file() else None


__all__ = ["MULTIRUN_FILE", "parse_override", "parse_overrides", "declared_sweep_keys", "load_multirun_config"]
