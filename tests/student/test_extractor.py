"""Latent reasoning extractors: shapes, parameter budgets, masking, gradients, and each variant
against a straightforward reference implementation of its formula."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lrkd.student.encoder import count_parameters
from lrkd.student.extractor import (GATExtractor, LatentExtractor, MLPExtractor, NoExtractor,
                                    PolyExtractor)

CONF = Path(__file__).resolve().parents[2] / "conf" / "extractor"
KINDS = ("none", "mlp", "poly", "gat")

# tiny size: Hd 8, K 2, Dz 4, mlp_hidden 6, 2 heads
HD, K, DZ, M, HEADS = 8, 2, 4, 6, 2
TINY = {
    "mlp": lambda: MLPExtractor(HD, K, DZ, mlp_hidden=M, dropout=0.0),
    "poly": lambda: PolyExtractor(HD, K, DZ, num_heads=HEADS, dropout=0.0),
    "gat": lambda: GATExtractor(HD, K, DZ, num_heads=HEADS, dropout=0.0),
    "gat2": lambda: GATExtractor(HD, K, DZ, num_heads=HEADS, num_layers=2, dropout=0.0),
    "gat_plain": lambda: GATExtractor(HD, K, DZ, num_heads=HEADS, dropout=0.0, residual=False),
}


def _inputs(batch=3, length=7, hidden=HD, seed=0):
    """Random token states with unit-scale entries and a padded tail per row."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, hidden, generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1, 6:] = 0
    return states, mask


def _extractor(kind, seed=0):
    torch.manual_seed(seed)
    return TINY[kind]().eval()


@pytest.mark.parametrize("kind, expected", [
    # Linear(8, 2*6) + stacked second layers [2, 6, 4] and bias [2, 4]
    ("mlp", (8 * 12 + 12) + (2 * 6 * 4 + 2 * 4)),
    # queries [2, 2, 8] + value Linear(8, 8) + proj Linear(8, 4)
    ("poly", 2 * 2 * 8 + (8 * 8 + 8) + (8 * 4 + 4)),
    # embedding [2, 8] + per layer W 8x8 and a_src, a_dst [2, 4] each + proj Linear(8, 4)
    ("gat", 2 * 8 + (8 * 8 + 2 * 2 * 4) + (8 * 4 + 4)),
    ("gat2", 2 * 8 + 2 * (8 * 8 + 2 * 2 * 4) + (8 * 4 + 4)),
    ("gat_plain", 2 * 8 + (8 * 8 + 2 * 2 * 4) + (8 * 4 + 4)),   # the skip has no parameters
])
def test_exact_parameter_counts_at_tiny_size(kind, expected):
    assert count_parameters(_extractor(kind)) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_configs_instantiate_under_the_paper_budget(kind):
    """At MiniLM size (Hd 384, K 3, Dz 128) every variant stays under 1M parameters."""
    cfg = OmegaConf.load(CONF / f"{kind}.yaml")
    assert "hidden_size" not in cfg and "num_perspectives" not in cfg
    extractor = instantiate(cfg, hidden_size=384, num_perspectives=3)
    assert isinstance(extractor, LatentExtractor)
    n = count_parameters(extractor)
    print(f"\n{type(extractor).__name__} ({kind}.yaml) at Hd 384, K 3, Dz 128: {n:,} parameters")
    expected = {"none": 0, "mlp": 394_368, "poly": 201_728, "gat": 198_656}[kind]
    assert n == expected < 1_000_000
    assert extractor.output_dim == (0 if kind == "none" else 3 * 128)
    states, mask = _inputs(batch=2, length=5, hidden=384)
    z = extractor.eval()(states, mask)
    assert z is None if kind == "none" else z.shape == (2, 3, 128)


def test_no_extractor_is_empty():
    extractor = NoExtractor(384, 3, latent_dim=128)
    assert extractor.output_dim == 0 and count_parameters(extractor) == 0
    assert extractor(*_inputs(hidden=384)) is None


@pytest.mark.parametrize("kind", TINY)
def test_shape_output_dim_and_finite(kind):
    extractor = _extractor(kind)
    z = extractor(*_inputs())
    assert z.shape == (3, K, DZ) and extractor.output_dim == K * DZ
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("kind", TINY)
def test_padded_token_states_do_not_change_z(kind):
    extractor = _extractor(kind)
    states, mask = _inputs()
    z = extractor(states, mask)
    garbage = states.clone()
    garbage[mask == 0] = 1e3 * torch.randn(int((mask == 0).sum()), HD)
    torch.testing.assert_close(extractor(garbage, mask), z)
    # and unpadded states do matter
    changed = states.clone()
    changed[:, 1] += 1.0
    assert not torch.allclose(extractor(changed, mask), z)


@pytest.mark.parametrize("kind", TINY)
def test_gradient_reaches_every_parameter(kind):
    extractor = _extractor(kind).train()
    states, mask = _inputs()
    states.requires_grad_(True)
    z = extractor(states, mask)
    (z * torch.randn_like(z)).sum().backward()
    for name, p in extractor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert states.grad[mask == 1].abs().sum() > 0
    assert states.grad[mask == 0].abs().sum() == 0


@pytest.mark.parametrize("kind", TINY)
def test_perspectives_differ_and_respond_differently_to_the_input(kind):
    extractor = _extractor(kind)
    states, mask = _inputs()
    z = extractor(states, mask)
    # how each perspective's latent moves when the tokens change (a constant per-perspective
    # offset, e.g. a learned embedding passed through, would not count)
    response = extractor(_inputs(seed=1)[0], mask) - z
    for i in range(K):
        for j in range(i + 1, K):
            gap = (z[:, i] - z[:, j]).norm(dim=-1) / z.norm(dim=-1).mean()
            assert (gap > 0.05).all(), (i, j, gap)
            moved = (response[:, i] - response[:, j]).norm(dim=-1) / response.norm(dim=-1).mean()
            assert (moved > 0.02).all(), (i, j, moved)  # GAT: static attention, ~6 %


def test_mlp_equals_one_mlp_per_perspective():
    extractor = _extractor("mlp")
    states, mask = _inputs()
    mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    for k in range(K):
        rows = slice(k * M, (k + 1) * M)
        inner = F.gelu(mean @ extractor.inner.weight[rows].T + extractor.inner.bias[rows])
        z_k = inner @ extractor.outer_weight[k] + extractor.outer_bias[k]
        torch.testing.assert_close(extractor(states, mask)[:, k], z_k)


def test_poly_equals_multihead_attention_with_learned_queries():
    """nn.MultiheadAttention (random projections, identity output projection) queried by K
    codes, then ``proj``: the extractor with the folded queries gives the same z."""
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(HD, HEADS, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.weight.copy_(torch.eye(HD))
        mha.out_proj.bias.zero_()
    codes = torch.randn(K, HD)
    extractor = _extractor("poly")
    d = HD // HEADS
    w_q, w_k, w_v = mha.in_proj_weight.detach().split(HD)
    b_q, _, b_v = mha.in_proj_bias.detach().split(HD)
    with torch.no_grad():
        for h in range(HEADS):
            rows = slice(h * d, (h + 1) * d)
            q = codes @ w_q[rows].T + b_q[rows]                          # [K, d]
            extractor.queries[:, h] = q @ w_k[rows] / math.sqrt(d)      # [K, Hd]
        extractor.value.weight.copy_(w_v)
        extractor.value.bias.copy_(b_v)

    states, mask = _inputs()
    attended, _ = mha(codes.expand(3, K, HD), states, states, key_padding_mask=mask == 0)
    torch.testing.assert_close(extractor(states, mask), extractor.proj(attended))


def _dense_gat_layer(layer, tokens, mask, nodes):
    """GAT on the full node set [tokens ; perspectives] with an adjacency matrix: W applied to
    every node, e_ij = LeakyReLU(a_dst·Wx_i + a_src·Wx_j) for all pairs, masked softmax over j,
    then the perspective rows (plus their input with the residual skip)."""
    batch, length, _ = tokens.shape
    x = torch.cat([tokens, nodes], dim=1)                                     # [B, N, Hd]
    wx = layer.weight(x).view(batch, x.shape[1], HEADS, -1)                   # [B, N, h, d]
    dst = (wx * layer.att_dst).sum(-1)                                        # [B, N, h]
    src = (wx * layer.att_src).sum(-1)
    e = F.leaky_relu(dst[:, :, None, :] + src[:, None, :, :], 0.2)           # [B, i, j, h]
    source_ok = torch.cat([mask.bool(), torch.ones(batch, K, dtype=torch.bool)], 1)
    e = e.masked_fill(~source_ok[:, None, :, None], float("-inf"))
    alpha = e.softmax(dim=2)
    out = F.elu(torch.einsum("bijh,bjhd->bihd", alpha, wx)).reshape(batch, -1, HD)
    return out[:, length:] + nodes if layer.residual else out[:, length:]


@pytest.mark.parametrize("kind", ["gat", "gat2", "gat_plain"])
def test_gat_equals_dense_graph_attention(kind):
    extractor = _extractor(kind)
    states, mask = _inputs()
    nodes = extractor.perspective_embedding.weight + (
        (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))[:, None]
    for layer in extractor.layers:
        nodes = _dense_gat_layer(layer, states, mask, nodes)
    torch.testing.assert_close(extractor(states, mask), extractor.proj(nodes))


@pytest.mark.parametrize("make, match", [
    (lambda: MLPExtractor(8, 2, mlp_hiden=4), "unexpected hyper-parameters"),
    (lambda: PolyExtractor(8, 2, num_heads=3), "num_heads"),
    (lambda: GATExtractor(8, 0), "num_perspectives"),
    (lambda: GATExtractor(8, 2, num_layers=0), "num_layers"),
    (lambda: MLPExtractor(8, 2, dropout=1.0), "dropout"),
])
def test_bad_hyper_parameters_are_refused(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_wrong_hidden_size_is_refused():
    with pytest.raises(ValueError, match=r"hidden \[B, L, 8\]"):
        _extractor("poly")(*_inputs(hidden=16))
