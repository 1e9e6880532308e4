"""Efficient Paired Attention (EPA) and the UNETR++ transformer block built around it.

Shaker et al., "UNETR++: Delving into Efficient and Accurate 3D Medical Image Segmentation",
IEEE TMI 2024, Sec. III-B and Fig. 2.

- :class:`EfficientPairedAttention`: tokens (B, N, C) -> (B, N, C). Shared query/key weights feed
  a *channel* branch (C/h x C/h attention per head) and a *spatial* branch whose keys and values
  are first projected along the token axis from N to p, so its attention is N x p (linear in N).
- :class:`EPABlock`: a 3D map (B, C, Z, Y, X) -> (B, C, Z, Y, X): learnable position embedding,
  pre-LayerNorm EPA with layer scale, then a 3x3x3 residual conv block and a 1x1x1 conv.
"""

from __future__ import annotations

import math
from typing import Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.blocks.conv import ResidualBlock


class EfficientPairedAttention(nn.Module):
    """EPA on tokens: (B, N, C) -> (B, N, C) (UNETR++, Sec. III-B, Fig. 2).

    One bias-free Linear C -> 4C gives the shared queries Q and keys K and the two values
    V_spatial, V_channel, each split into h heads of d = C/h channels.

    - Channel branch: Q, K L2-normalised along the tokens; per head
      A_c = softmax(tau_c * Q^T K) of shape (d, d); out_c[i] = sum_j A_c[i, j] V_channel[j].
    - Spatial branch: K and V_spatial projected along the token axis by one Linear(N, p) shared
      between them (the paper's E = F); per head A_s = softmax(tau_s * Q K_p^T) of shape (N, p);
      out_s = A_s V_p of shape (N, d). Cost O(N p d): never an N x N matrix.
    - Each branch: Linear C -> C/2; the two are concatenated to C (spatial first).

    The public code's spatial branch reshapes its (B, h, N, d) output with a wrong permute (tokens
    and channels get mixed up); we compute the equations as written.

    Args:
        num_tokens: N, fixed by the patch size and the stage's stride (the token projection is a
            Linear over the token axis).
        channels: C; must be divisible by ``num_heads``.
        num_heads: h (paper: 4).
        proj_size: p, the projected token count of the spatial branch (paper: 64; 32 in the
            deepest encoder stage). Capped at N (projecting to more tokens than exist adds nothing).
        qkv_bias: bias of the C -> 4C Linear (public code: none).
        attn_dropout: dropout on both attention maps (public code: 0.15 in training).
        share_token_proj: one token projection for keys and values (paper, and the public Synapse
            and BraTS code); False gives separate E and F (the public ACDC and Lung code).
        fusion: ``"concat"`` (public Synapse, ACDC and Lung code: each branch Linear C -> C/2,
            concatenated) or ``"sum"`` (public BraTS code: out_s + out_c, no output Linears).
    """

    def __init__(self, num_tokens: int, channels: int, num_heads: int = 4, proj_size: int = 64,
                 qkv_bias: bool = False, attn_dropout: float = 0.0, share_token_proj: bool = True,
                 fusion: str = "concat"):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"EfficientPairedAttention: channels ({channels}) must be divisible by "
                             f"num_heads ({num_heads})")
        if num_tokens < 1 or proj_size < 1:
            raise ValueError(f"EfficientPairedAttention: num_tokens ({num_tokens}) and proj_size ({proj_size}) "
                             f"must be >= 1")
        self.num_tokens, self.channels, self.num_heads = int(num_tokens), int(channels), int(num_heads)
        self.head_dim = channels // num_heads
        self.proj_size = min(int(proj_size), self.num_tokens)
        self.qkvv = nn.Linear(channels, 4 * channels, bias=qkv_bias)
        if fusion not in ("concat", "sum"):
            raise ValueError(f"EfficientPairedAttention: fusion must be 'concat' or 'sum', got {fusion!r}")
        self.fusion = fusion
        # the paper's E (keys) and F (values); shared: one module serves both
        self.token_proj = nn.Linear(self.num_tokens, self.proj_size)
        self.value_proj = None if share_token_proj else nn.Linear(self.num_tokens, self.proj_size)
        self.temperature_channel = nn.Parameter(torch.ones(num_heads, 1, 1))
        # Our choice: the paper scales spatial logits by 1/sqrt(d); the public code learns a temperature
        # (init 1) -- we learn it too, starting at the paper's 1/sqrt(d).
        self.temperature_spatial = nn.Parameter(torch.full((num_heads, 1, 1), self.head_dim ** -0.5))
        self.attn_drop = nn.Dropout(attn_dropout)
        if fusion == "concat":
            self.out_spatial = nn.Linear(channels, channels // 2)
            self.out_channel = nn.Linear(channels, channels - channels // 2)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT-style init for the channel-mixing Linears (as the public code); the token projection
        # keeps PyTorch's fan-in init (bound 1/sqrt(N)), so K_p's scale does not grow with the patch size.
        for lin in (self.qkvv, getattr(self, "out_spatial", None), getattr(self, "out_channel", None)):
            if lin is None:
                continue
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        if n != self.num_tokens or c != self.channels:
            raise ValueError(f"EfficientPairedAttention: expected tokens (B, {self.num_tokens}, {self.channels}), "
                             f"got {tuple(x.shape)} (N is fixed by the patch size the network was built for)")
        h, d = self.num_heads, self.head_dim
        # (B, N, 4C) -> 4 x (B, h, d, N)
        q, k, v_channel, v_spatial = self.qkvv(x).view(b, n, 4, h, d).permute(2, 0, 3, 4, 1).unbind(0)

        # channel branch: (d x d) attention per head
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn_c = self.attn_drop(((qn @ kn.transpose(-2, -1)) * self.temperature_channel).softmax(dim=-1))
        out_c = (attn_c @ v_channel).permute(0, 3, 1, 2).reshape(b, n, c)  # (B, h, d, N) -> (B, N, C)

        # spatial branch: keys and values projected N -> p by the shared Linear, (N x p) attention.
        # Our choice: Q enters unnormalised, as in the paper's equation (the public code reuses the
        # token-L2-normalised Q here, which makes every logit O(1/sqrt(N)) and the map near-uniform).
        k_p = self.token_proj(k)  # (B, h, d, p)
        v_p = (self.token_proj if self.value_proj is None else self.value_proj)(v_spatial)  # (B, h, d, p)
        attn_s = self.attn_drop(((q.transpose(-2, -1) @ k_p) * self.temperature_spatial).softmax(dim=-1))
        out_s = (attn_s @ v_p.transpose(-2, -1)).transpose(1, 2).reshape(b, n, c)  # (B, h, N, d) -> (B, N, C)

        if self.fusion == "concat":
            return torch.cat((self.out_spatial(out_s), self.out_channel(out_c)), dim=-1)
        return out_s + out_c


class EPABlock(nn.Module):
    """UNETR++ transformer block on a 3D map: (B, C, Z, Y, X) -> (B, C, Z, Y, X) (UNETR++, Fig. 2).

    With tokens t = flatten(x) + pos_embed (N = Z*Y*X):
    ``t = t + gamma * EPA(LayerNorm(t))``; back to the map y; ``out = y + Conv1x1(Dropout3d(ResBlock3x3x3(y)))``
    (the paper's Fig. 2 arrangement as in the public code).
    Every block has its own learnable position embedding (1, N, C), zero-initialised, as in the
    public code (its parameter count includes one per block).

    Args:
        spatial_size: (Z, Y, X) of the stage's feature map (fixes N).
        channels: C.
        num_heads, proj_size: see :class:`EfficientPairedAttention`.
        attn_dropout: dropout on both attention maps (public code: 0.15).
        conv_dropout: Dropout3d before the 1x1x1 conv (public code: 0.1).
        layer_scale_init: initial value of the per-channel scale gamma (paper: 1e-6).
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: ops of the residual conv block
            (public code: BatchNorm3d, LeakyReLU(0.01)).
        pos_embed: add a learnable position embedding.
        conv_blocks: residual conv blocks before the 1x1x1 conv (paper, Synapse and BraTS code: 1;
            the public ACDC and Lung code: 2).
        share_token_proj, fusion: see :class:`EfficientPairedAttention`.
    """

    def __init__(self, spatial_size: Sequence[int], channels: int, num_heads: int = 4, proj_size: int = 64,
                 attn_dropout: float = 0.15, conv_dropout: float = 0.1, layer_scale_init: float = 1e-6,
                 norm_op: Type[nn.Module] = nn.BatchNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] = nn.LeakyReLU, nonlin_kwargs: dict | None = None,
                 pos_embed: bool = True, conv_blocks: int = 1, share_token_proj: bool = True,
                 fusion: str = "concat"):
        super().__init__()
        self.spatial_size = tuple(int(s) for s in spatial_size)
        n = math.prod(self.spatial_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, channels)) if pos_embed else None
        self.norm = nn.LayerNorm(channels)
        self.attn = EfficientPairedAttention(n, channels, num_heads, proj_size, attn_dropout=attn_dropout,
                                             share_token_proj=share_token_proj, fusion=fusion)
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale_init)))
        self.conv = nn.Sequential(*(ResidualBlock(channels, channels, 3, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs,
                                                  nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, bias=False)
                                    for _ in range(conv_blocks)))
        self.proj = nn.Sequential(nn.Dropout3d(conv_dropout), nn.Conv3d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *size = x.shape
        if tuple(size) != self.spatial_size:
            raise ValueError(f"EPABlock: expected a feature map of spatial size {list(self.spatial_size)}, got "
                             f"{list(size)} (the block is built for one patch size)")
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if self.pos_embed is not None:
            t = t + self.pos_embed
        t = t + self.gamma * self.attn(self.norm(t))
        y = t.transpose(1, 2).reshape(b, c, *size)
        return y + self.proj(self.conv(y))
