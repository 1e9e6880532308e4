"""A plain pre-LN transformer encoder on tokens (ViT / TransBTS style), as MISSU's bottleneck uses it.

- :class:`TransformerLayer`: (B, N, d) -> (B, N, d);
  x <- x + MSA(LN(x)), then x <- x + FFN(LN(x)) (Vaswani et al. 2017, pre-LN as in ViT,
  Dosovitskiy et al. ICLR 2021). MSA uses ``torch.nn.functional.scaled_dot_product_attention``.
- :class:`TransformerEncoder`: (B, N, d) -> (B, N, d); adds a learnable position embedding
  (1, N, d), runs ``depth`` layers and a final LayerNorm.
"""

from __future__ import annotations

from typing import Type

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention: (B, N, d) -> (B, N, d), ``num_heads`` heads of d / num_heads channels.

    One Linear d -> 3d gives Q, K, V; softmax(Q K^T / sqrt(d_h)) V per head (through
    ``scaled_dot_product_attention``, so memory-efficient kernels are used where available);
    a Linear d -> d projects the concatenated heads.
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_dropout: float = 0.0, proj_dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MultiHeadSelfAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3d) -> 3 x (B, h, N, d/h)
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer: (B, N, d) -> (B, N, d).

    Args:
        dim: token width d.
        num_heads: attention heads.
        ffn_dim: hidden width of the feed-forward network (Linear d -> ffn_dim, nonlin, Linear ffn_dim -> d).
        dropout: dropout after the attention projection and inside/after the FFN.
        attn_dropout: dropout on the attention weights (training only).
        nonlin: FFN activation class (GELU as in ViT).
    """

    def __init__(self, dim: int, num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.0,
                 attn_dropout: float = 0.0, nonlin: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nonlin(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Learnable position embedding + ``depth`` pre-LN layers + final LayerNorm: (B, N, d) -> (B, N, d).

    ``num_tokens`` fixes N (the position embedding is (1, N, d)); callers derive it from the plan.
    """

    def __init__(self, dim: int, num_tokens: int, depth: int = 4, num_heads: int = 8, ffn_dim: int = 2048,
                 dropout: float = 0.0, attn_dropout: float = 0.0, nonlin: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.num_tokens = num_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(TransformerLayer(dim, num_heads, ffn_dim, dropout, attn_dropout, nonlin)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"TransformerEncoder: x must have {self.num_tokens} tokens (from the patch size the "
                             f"network was built for), got {x.shape[1]}")
        x = self.pos_drop(x + self.pos_embed)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
