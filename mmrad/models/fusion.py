"""The cross-attention query decoder (pure torch).

Queries are text embeddings (one per finding description, phrase or report sentence); memory is the image's patch
tokens. Each pre-norm layer runs self-attention among the queries (optional), cross-attention from the queries to
the patches, and an MLP. The cross-attention weights, averaged over heads, are returned for every layer: they are the
grounding map of each query. The design follows the query decoders of MedKLIP and KAD.

Convolutional towers' tokens carry little of where they lie in the image; ``position="sincos"`` adds a fixed 2-D
sine-cosine embedding of each patch's place (as in MAE and DETR) to the cross-attention keys (not the values), so a
finding query can learn where that finding usually is as well as what it looks like.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention that can return its weights averaged over heads."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, need_weights: bool = False, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Args: x (B, Q, D) queries, memory (B, N, D), keys (B or 1, N, D) when they differ from the memory.
        Returns: (B, Q, D), and with ``need_weights`` the weights and the scaled attention logits, both (B, Q, N)
        averaged over heads (else None, None)."""
        b, q_len, d = x.shape
        h = self.num_heads
        q = self.q(x).view(b, q_len, h, d // h).transpose(1, 2)  # (B, H, Q, d)
        keys = memory if keys is None else keys
        k = self.k(keys).expand(b, -1, -1).reshape(b, -1, h, d // h).transpose(1, 2)  # (B, H, N, d)
        v = self.v(memory).view(b, -1, h, d // h).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) * (d // h) ** -0.5  # (B, H, Q, N)
            weights = torch.softmax(scores, dim=-1)
            out = F.dropout(weights, drop, self.training) @ v
            mean_weights, mean_scores = weights.mean(1), scores.mean(1)  # (B, Q, N)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            mean_weights = mean_scores = None
        return self.out(out.transpose(1, 2).reshape(b, q_len, d)), mean_weights, mean_scores


class QueryDecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, self_attention=True):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout) if self_attention else None
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: x (B, Q, D), memory (B, N, D) (already normalised), keys: the memory with position, or None.
        Returns: (B, Q, D), and the cross-attention weights and logits (B, Q, N), averaged over heads."""
        if self.self_attn is not None:
            y = self.norm_self(x)
            x = x + self.drop(self.self_attn(y, y)[0])
        y, weights, scores = self.cross_attn(self.norm_cross(x), memory, need_weights=True, keys=keys)
        x = x + self.drop(y)
        x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x, weights, scores


class QueryDecoder(nn.Module):
    """``num_layers`` pre-norm decoder layers over text queries and image patch tokens.

    Args:
        dim: width of queries and memory.
        num_layers, num_heads, mlp_ratio, dropout: the usual transformer sizes.
        self_attention: let queries attend to each other. Off, each query's output depends on that query alone
            (so a query scores the same whatever other queries are asked with it).
        position: ``"sincos"`` adds each patch's 2-D sine-cosine position to the cross-attention keys (the token
            grid must be square, as mmrad's square inputs give); ``"none"`` leaves the keys as the tokens.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        self_attention: bool = True,
        position: str = "none",
    ):
        super().__init__()
        if position not in ("none", "sincos"):
            raise ValueError(f"position must be 'none' or 'sincos', got {position!r}")
        if position == "sincos" and dim % 4:
            raise ValueError(f"a 2-D sine-cosine position needs a width divisible by 4, got {dim}")
        self.position = position
        self.memory_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            QueryDecoderLayer(dim, num_heads, mlp_ratio, dropout, self_attention) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Args:
            queries: (Q, D) shared by the batch, or (B, Q, D).
            memory: (B, N, D) image tokens.

        Returns:
            states (B, Q, D) after the final norm; the cross-attention weights of every layer, each (B, Q, N),
            averaged over heads; and the evidence (B, Q): log-mean-exp over the patches of the last layer's
            head-averaged attention logits (high when some patch strongly matches the query).
        """
        if queries.ndim == 2:
            queries = queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        memory = self.memory_norm(memory)
        keys = None
        if self.position == "sincos":
            keys = memory + sincos_position(memory.shape[1], memory.shape[2], memory.device, memory.dtype)
        x, attentions = queries, []
        for layer in self.layers:
            x, weights, scores = layer(x, memory, keys)
            attentions.append(weights)
        evidence = torch.logsumexp(scores, dim=-1) - math.log(memory.shape[1])
        return self.norm(x), attentions, evidence


def sincos_position(num_tokens: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(1, N, D) fixed 2-D sine-cosine embedding of a square grid of N tokens in row-major order: half the channels
    encode the row, half the column, each as sines and cosines of geometrically spaced frequencies."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"a 2-D position embedding needs a square token grid, got {num_tokens} tokens")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # (D/4,)
    coords = torch.arange(side, device=device, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (rows.flatten(), cols.flatten()):
        angles = axis[:, None] * omega[None]  # (N, D/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1)[None].to(dtype)


def attention_maps(attentions: list[torch.Tensor] | tuple, grid: tuple[int, int], last_k: int = 1) -> torch.Tensor:
    """Mean of the last ``last_k`` layers' cross-attention, reshaped to the token grid: (B, Q, h, w)."""
    if not 1 <= last_k <= len(attentions):
        raise ValueError(f"last_k must be in [1, {len(attentions)}], got {last_k}")
    mean = torch.stack(list(attentions[-last_k:])).mean(0)  # (B, Q, N)
    return mean.reshape(*mean.shape[:-1], grid[0], grid[1])
