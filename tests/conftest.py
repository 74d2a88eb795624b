"""Shared fixtures: the real Hydra config composed with tiny models, writing under tmp dirs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lrkd  # noqa: E402,F401  (resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One tokenization cache for the whole test session (tokenizing chorus once is enough)."""
    return tmp_path_factory.mktemp("token_cache")


def compose_cfg(overrides: list[str], output_dir: Path, cache_dir: Path):
    """Compose conf/train.yaml like `python train.py <overrides>` would, outside of a Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path, token_cache):
    """make_cfg(*overrides) -> a composed DictConfig with the tiny student and tmp output dirs."""

    def _make(*overrides: str, output_dir: Path | None = None):
        base = ["student=tiny", "logger=csv", "trainer.enable_model_summary=false"]
        return compose_cfg(base + list(overrides), output_dir or tmp_path / "run", token_cache)

    return _make
