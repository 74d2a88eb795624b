"""Latent reasoning extractors g (LRKD): token states H [B, L, Hd] -> K latent vectors z [B, K, Dz].

One latent vector per teacher perspective (user intent, structured analysis, business rules, ...).
The student's classifier reads ``[h ; z_1 ; ... ; z_K]``, so g stays in the model at inference and
must be cheap: every variant below costs O(B · L · Hd · small) on top of the encoder (the learned
queries and attention vectors live in token-state space, and the projections are applied after the
weighted sums over tokens, to only B · K · heads vectors).

Parameters at the paper's budget (hidden_size 384, K = 3, latent_dim 128, defaults otherwise),
all under its 1M limit:

    ==============================  ===========  ================================================
    variant                         parameters   what it is
    ==============================  ===========  ================================================
    NoExtractor (``none``)                    0  plain cross-encoder baseline, z absent
    MLPExtractor (``mlp``)              394,368  masked mean of H, one 2-layer MLP per perspective
    PolyExtractor (``poly``)            201,728  K learned codes attend over H (4 heads)
    GATExtractor (``gat``, 1 layer)     198,656  GAT over token + perspective nodes (4 heads)
    GATExtractor (2 layers)             346,880
    ==============================  ===========  ================================================

Forward time as a share of all-MiniLM-L6-v2's forward (22.6M parameters without its pooler),
measured side by side on a CPU, 1 thread, inference mode (noisy by about 20 %):

    =====================  ======  ======  =====  =============
    batch x length         mlp     poly    gat    gat, 2 layers
    =====================  ======  ======  =====  =============
    32 x 128               0.2 %   0.3 %   0.7 %  1.1 %
    1 x 64                 0.8 %   0.4 %   1.2 %  3.7 %
    =====================  ======  ======  =====  =============
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrkd.student.encoder import mean_over_tokens


class LatentExtractor(nn.Module):
    """Base class: ``forward(hidden [B, L, Hd], attention_mask [B, L]) -> z [B, K, Dz] | None``.

    hidden_size (Hd) and num_perspectives (K) come from the student module at instantiate time;
    latent_dim (Dz), dropout and the variant's own hyper-parameters come from ``conf/extractor``.
    ``output_dim`` = K · Dz is the width the extractor adds to the classifier's input.
    """

    def __init__(self, hidden_size: int, num_perspectives: int, latent_dim: int = 128,
                 dropout: float = 0.1, **kw):
        super().__init__()
        if kw:
            raise TypeError(f"{type(self).__name__}: unexpected hyper-parameters {sorted(kw)}")
        for name, value in (("hidden_size", hidden_size), ("num_perspectives", num_perspectives),
                            ("latent_dim", latent_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int; got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1); got {dropout!r}")
        self.hidden_size = hidden_size
        self.num_perspectives = num_perspectives
        self.latent_dim = latent_dim
        self.dropout_p = float(dropout)

    @property
    def output_dim(self) -> int:
        """Width added to the classifier input: K · Dz (0 when there is no extractor)."""
        return self.num_perspectives * self.latent_dim

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor | None:
        raise NotImplementedError

    def _check_inputs(self, hidden: Tensor, attention_mask: Tensor) -> None:
        if (hidden.dim() != 3 or hidden.shape[-1] != self.hidden_size
                or attention_mask.shape != hidden.shape[:2]):
            raise ValueError(
                f"{type(self).__name__}: expected hidden [B, L, {self.hidden_size}] and "
                f"attention_mask [B, L]; got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
            )

    def _heads(self, num_heads: int) -> int:
        if not isinstance(num_heads, int) or num_heads < 1 or self.hidden_size % num_heads:
            raise ValueError(f"{type(self).__name__}: num_heads must be a positive divisor of "
                             f"hidden_size {self.hidden_size}; got {num_heads!r}")
        return num_heads


class NoExtractor(LatentExtractor):
    """No latent reasoning: the plain cross-encoder baseline. ``forward`` returns None."""

    @property
    def output_dim(self) -> int:
        return 0

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> None:
        return None


class MLPExtractor(LatentExtractor):
    """z_k = W2_k · GELU(W1_k · mean(H) + b1_k) + b2_k, one 2-layer MLP per perspective.

    The K first layers read the same vector, so they are one ``Linear(Hd, K · mlp_hidden)``; the
    K second layers are a stacked weight [K, mlp_hidden, Dz] applied with one einsum.
    Parameters: Hd·K·M + K·M + K·M·Dz + K·Dz (M = mlp_hidden).
    """

    def __init__(self, hidden_size: int, num_perspectives: int, latent_dim: int = 128,
                 mlp_hidden: int = 256, dropout: float = 0.1, **kw):
        super().__init__(hidden_size, num_perspectives, latent_dim, dropout, **kw)
        if not isinstance(mlp_hidden, int) or mlp_hidden < 1:
            raise ValueError(f"MLPExtractor: mlp_hidden must be a positive int; got {mlp_hidden!r}")
        self.mlp_hidden = mlp_hidden
        self.inner = nn.Linear(hidden_size, num_perspectives * mlp_hidden)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.outer_weight = nn.Parameter(torch.empty(num_perspectives, mlp_hidden, latent_dim))
        self.outer_bias = nn.Parameter(torch.empty(num_perspectives, latent_dim))
        bound = 1.0 / math.sqrt(mlp_hidden)  # nn.Linear's default init, per perspective
        nn.init.uniform_(self.outer_weight, -bound, bound)
        nn.init.uniform_(self.outer_bias, -bound, bound)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        self._check_inputs(hidden, attention_mask)
        mean = mean_over_tokens(hidden, attention_mask)                              # [B, Hd]
        inner = self.dropout(self.activation(self.inner(mean)))                 # [B, K*M]
        inner = inner.view(-1, self.num_perspectives, self.mlp_hidden)          # [B, K, M]
        return torch.einsum("bkm,kmd->bkd", inner, self.outer_weight) + self.outer_bias


class PolyExtractor(LatentExtractor):
    """Poly-encoder style: K learned perspective codes attend over the token states.

    Equal to ``nn.MultiheadAttention`` with learned queries (key padding mask from
    ``attention_mask``), followed by a projection to Dz, computed without projecting the L tokens:
    - the key projection is absorbed into the learned query, since for a fixed query
      (W_q c)·(W_k h) = (W_kᵀ W_q c)·h; ``queries`` [K, heads, Hd] holds W_kᵀ W_q c / sqrt(d) per
      perspective and head (the key bias only shifts all scores of a query and cancels);
    - the value projection commutes with the weighted sum: Σ_j a_j (W_v h_j + b) = W_v Σ_j a_j h_j + b.
    ``value`` is ``Linear(Hd, Hd)`` with rows grouped by head (head h owns rows h·d .. (h+1)·d),
    exactly as MultiheadAttention's value slice; MultiheadAttention's output projection is folded
    into ``proj``. Parameters: K·heads·Hd + Hd·Hd + Hd + Hd·Dz + Dz.
    """

    def __init__(self, hidden_size: int, num_perspectives: int, latent_dim: int = 128,
                 num_heads: int = 4, dropout: float = 0.1, **kw):
        super().__init__(hidden_size, num_perspectives, latent_dim, dropout, **kw)
        self.num_heads = self._heads(num_heads)
        self.head_dim = hidden_size // num_heads
        # std Hd^-1/2 (the poly-encoder's code init): unit-scale scores on unit-scale token states,
        # so the perspectives attend differently from the first step.
        self.queries = nn.Parameter(torch.randn(num_perspectives, num_heads, hidden_size)
                                    * hidden_size ** -0.5)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, latent_dim)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        self._check_inputs(hidden, attention_mask)
        batch, K, heads = hidden.shape[0], self.num_perspectives, self.num_heads
        # All heads share the (unprojected) keys and values, so the K·heads queries form one
        # attention "head" of K·heads query positions: no copy of H per head.
        query = self.queries.reshape(1, 1, K * heads, self.hidden_size).expand(batch, -1, -1, -1)
        tokens = hidden.unsqueeze(1)                                           # [B, 1, L, Hd]
        mask = attention_mask.bool()[:, None, None, :]                         # [B, 1, 1, L]
        context = F.scaled_dot_product_attention(
            query.to(hidden.dtype), tokens, tokens, attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0, scale=1.0,
        ).view(batch, K, heads, self.hidden_size)                              # [B, K, h, Hd]
        weight = self.value.weight.view(heads, self.head_dim, self.hidden_size)
        values = torch.einsum("bkhd,hed->bkhe", context, weight)               # [B, K, h, d]
        values = values + self.value.bias.view(heads, self.head_dim)
        return self.proj(values.reshape(batch, K, self.hidden_size))


class GraphAttentionLayer(nn.Module):
    """One GAT layer (Veličković et al. 2018) updating the K perspective nodes of the graph
    {L token nodes} ∪ {K perspective nodes}; token nodes are sources only.

    For perspective node i and neighbour j (every unmasked token, every perspective node, i
    itself included), per head: e_ij = LeakyReLU(a_dstᵀ W x_i + a_srcᵀ W x_j),
    α_ij = softmax_j e_ij, x_i' = ELU(‖_heads Σ_j α_ij W x_j) (+ x_i with ``residual``).
    W: Hd -> heads · (Hd / heads), no bias.
    Token sources never get W applied: a_srcᵀ W h_j = (Wᵀ a_src)·h_j, Σ_j α_ij W h_j = W Σ_j α_ij h_j.
    Parameters: Hd·Hd + 2·Hd.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.1,
                 negative_slope: float = 0.2, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.hidden_size = hidden_size
        self.negative_slope = negative_slope
        self.weight = nn.Linear(hidden_size, hidden_size, bias=False)
        self.att_dst = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.att_src = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.weight.weight)  # Glorot, as in the GAT paper
        nn.init.xavier_uniform_(self.att_dst)
        nn.init.xavier_uniform_(self.att_src)

    def forward(self, tokens: Tensor, attention_mask: Tensor, nodes: Tensor) -> Tensor:
        """tokens [B, L, Hd], attention_mask [B, L], perspective nodes [B, K, Hd] -> [B, K, Hd]."""
        batch, K = nodes.shape[:2]
        heads, head_dim = self.num_heads, self.head_dim
        weight = self.weight.weight.view(heads, head_dim, self.hidden_size)       # [h, d, Hd]
        projected = self.weight(nodes).view(batch, K, heads, head_dim)            # W x, [B, K, h, d]
        token_att = torch.einsum("hf,hfd->hd", self.att_src, weight)              # Wᵀ a_src, [h, Hd]
        score_tokens = torch.einsum("bld,hd->bhl", tokens, token_att)             # [B, h, L]
        score_src = torch.einsum("bkhf,hf->bhk", projected, self.att_src)         # [B, h, K]
        score_dst = torch.einsum("bkhf,hf->bhk", projected, self.att_dst)         # [B, h, K]
        logits = torch.cat([score_dst[..., None] + score_tokens[:, :, None, :],   # [B, h, K, L]
                            score_dst[..., None] + score_src[:, :, None, :]],     # [B, h, K, K]
                           dim=-1)
        logits = F.leaky_relu(logits, self.negative_slope)
        neighbours = torch.cat([attention_mask.bool(),
                                attention_mask.new_ones(batch, K, dtype=torch.bool)], dim=1)
        logits = logits.masked_fill(~neighbours[:, None, None, :], float("-inf"))
        alpha = self.dropout(torch.softmax(logits, dim=-1))                      # [B, h, K, L+K]
        alpha_tokens, alpha_nodes = alpha.split([tokens.shape[1], K], dim=-1)
        token_context = torch.einsum("bhkl,bld->bhkd", alpha_tokens, tokens)     # [B, h, K, Hd]
        messages = torch.einsum("bhkd,hfd->bkhf", token_context, weight)
        messages = messages + torch.einsum("bhkj,bjhf->bkhf", alpha_nodes, projected)
        updated = F.elu(messages).reshape(batch, K, self.hidden_size)
        return nodes + updated if self.residual else updated


class GATExtractor(LatentExtractor):
    """Graph attention over token nodes and K perspective nodes, then a projection to Dz.

    Perspective node k starts as a learned embedding e_k plus the masked mean of H; each of
    ``num_layers`` :class:`GraphAttentionLayer` updates the perspective nodes from all unmasked
    tokens and all perspective nodes. Dense, masked, pure torch.

    ``residual`` (default on) adds an identity skip x_i + ELU(...), as Veličković et al. do for
    their deeper model. Without it the perspective nodes collapse: they share one neighbour set,
    and GAT's attention ranks neighbours the same for every target (a_dstᵀ W x_i only shifts a
    row's scores; only the LeakyReLU bends that), so after one layer the K nodes are nearly equal
    and a second layer cannot tell them apart (measured at init, 2 layers, Hd 384: the K outputs
    are 1-3 % apart without the skip).
    Parameters: K·Hd + num_layers·(Hd·Hd + 2·Hd) + Hd·Dz + Dz.
    """

    def __init__(self, hidden_size: int, num_perspectives: int, latent_dim: int = 128,
                 num_heads: int = 4, num_layers: int = 1, dropout: float = 0.1,
                 negative_slope: float = 0.2, residual: bool = True, **kw):
        super().__init__(hidden_size, num_perspectives, latent_dim, dropout, **kw)
        self.num_heads = self._heads(num_heads)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"GATExtractor: num_layers must be a positive int; got {num_layers!r}")
        self.perspective_embedding = nn.Embedding(num_perspectives, hidden_size)
        self.layers = nn.ModuleList(
            GraphAttentionLayer(hidden_size, num_heads, dropout, negative_slope, residual)
            for _ in range(num_layers)
        )
        self.proj = nn.Linear(hidden_size, latent_dim)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        self._check_inputs(hidden, attention_mask)
        nodes = self.perspective_embedding.weight + mean_over_tokens(hidden, attention_mask)[:, None]
        for layer in self.layers:
            nodes = layer(hidden, attention_mask, nodes)                        # [B, K, Hd]
        return self.proj(nodes)


__all__ = ["LatentExtractor", "NoExtractor", "MLPExtractor", "PolyExtractor",
           "GraphAttentionLayer", "GATExtractor"]
