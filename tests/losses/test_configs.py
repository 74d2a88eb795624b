"""conf/loss/*.yaml instantiate (through Hydra) into working WeightedLoss objects."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from lrkd.losses import CETerm, CRSDTerm, KDTerm, LatentTerm, OrdinalTerm, RankKDTerm, WeightedLoss

LOSS_CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
EXPECTED = {
    "ce": {"ce": CETerm},
    "kd": {"ce": CETerm, "kd": KDTerm},
    "crsd": {"ce": CETerm, "crsd": CRSDTerm},
    "latent": {"ce": CETerm, "latent": LatentTerm},
    "full": {"ce": CETerm, "kd": KDTerm, "crsd": CRSDTerm, "latent": LatentTerm},
    "ordinal": {"ce": CETerm, "ordinal": OrdinalTerm},
    "rank_kd": {"ce": CETerm, "ordinal": OrdinalTerm, "rank_kd": RankKDTerm},
}


def compose_loss(name: str, overrides=()):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(LOSS_CONF), version_base="1.3"):
            return compose(name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def out_and_batch(b=4, c=3, k=3, d=8, h=16):
    g = torch.Generator().manual_seed(1)
    out = {"logits": torch.randn(b, c, generator=g, requires_grad=True), "pooled": torch.randn(b, h, generator=g),
           "latent_pred": torch.randn(b, k, d, generator=g), "aug_logits": torch.randn(b, c, generator=g),
           "aug_pooled": torch.randn(b, h, generator=g)}
    batch = {"labels": torch.tensor([0, 1, -1, 2]), "annotated": torch.tensor([True, True, True, False]),
             "teacher_probs": torch.softmax(torch.randn(b, c, generator=g), -1),
             "latent_targets": torch.randn(b, k, d, generator=g), "query_index": torch.tensor([0, 0, 0, 1])}
    return out, batch


def test_every_loss_config_has_a_test():
    assert {p.stem for p in LOSS_CONF.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_config_instantiates_with_the_right_terms(name):
    loss = instantiate(compose_loss(name))
    assert isinstance(loss, WeightedLoss)
    assert {n: type(t) for n, t in loss.terms.items()} == EXPECTED[name]
    out, batch = out_and_batch()
    total, logs = loss(out, batch)
    assert torch.isfinite(total) and total.requires_grad
    assert set(loss.active_terms) <= set(logs)


def test_full_config_defaults():
    loss = instantiate(compose_loss("full"))
    assert [loss.terms[n].weight for n in ("ce", "kd", "crsd", "latent")] == [1.0, 1.0, 1.0, 0.1]
    assert loss.terms["kd"].temperature == 2.0
    assert loss.terms["crsd"].temperature == 0.05 and loss.terms["crsd"].stop_gradient
    assert loss.terms["latent"].distance == "mse"
    assert loss.needs_annotations and loss.needs_augmented_view


def test_ablation_is_one_override():
    loss = instantiate(compose_loss("full", ["terms.kd.weight=0", "terms.latent.distance=cosine"]))
    assert loss.active_terms == ["ce", "crsd", "latent"] and loss.terms["latent"].distance == "cosine"
    out, batch = out_and_batch()
    del batch["teacher_probs"]  # kd is off, so its input is not needed
    _, logs = loss(out, batch)
    assert "kd" not in logs
    removed = instantiate(compose_loss("full", ["~terms.crsd"]))
    assert list(removed.terms) == ["ce", "kd", "latent"] and not removed.needs_augmented_view
