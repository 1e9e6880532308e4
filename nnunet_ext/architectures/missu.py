"""MISSU: a TransUNet with self-distillation, sized from nnU-Net's plans.

Wang et al., "MISSU: 3D Medical Image Segmentation via Self-distilling TransUNet", IEEE TMI 2023.
Read top-down like the paper's overview figure:

- CNN encoder (TransBTS-like): conv3 C_in -> 16, then four levels of pre-activation residual blocks
  with widths (16, 32, 64, 128) and a stride conv3 between levels (total stride 8 per axis where the
  plan allows). Level outputs F_1..F_4 are the "local features".
- Transformer bottleneck on F_4: norm, ReLU, 1x1x1 conv 128 -> d = 512; tokens N = voxels of F_4;
  learnable position embedding (1, N, d); 4 pre-LN layers (8 heads); LN; Linear d -> 128; reshape.
- Decoder: per level, transposed conv up, concatenate the local feature F_i (not the MSF output),
  conv3 + norm + ReLU. 1x1x1 heads at the three decoder levels (deep supervision).
- Training only: the MSF pyramid turns F_1..F_3 into O_1..O_3 (:mod:`nnunet_ext.blocks.msf`); the
  trainer adds the self-distillation loss between them (:mod:`nnunet_ext.blocks.distillation`).
  In eval mode MSF is never executed, but it stays in the state dict (keys match between training
  and the predictor's rebuilt network).

Size choices where the paper is silent, by counting parameters against the paper's 10.50 M (4
channels, 4 classes, 128^3 patch; checked in ``tests/architectures/test_missu.py``). Fixed by the
paper's description: attention 4 x (4 d^2 + 4 d) = 4.20 M, position embedding N d = 4096 x 512 =
2.10 M, 1x1x1 projections 0.13 M. Free: the FFN width f (4 x 2 d f parameters: 2.10 M at f = d,
4.20 M at 2d, 8.39 M at 4d) and the residual blocks per level (2 x 27 w^2 weights each at width w;
with the stride convs the encoder has 1.47 M at one block per level, 4.40 M at TransBTS's
(1, 2, 2, 4)). Only one block per level with f = d = 512 lands near the paper's total; MSF adds
training-only parameters on top.

MACs: the paper's 132.11 G fits a counter that sees only convolution and linear layers
(thop/ptflops style); the attention products Q K^T and A V (4 layers x 2 N^2 d) come on top of it.
The paper's plan is 2^3 down-sampling per axis; from an nnU-Net plan the three strides follow
:func:`~nnunet_ext.architectures.plans.deepest_first_strides`.
"""

from __future__ import annotations

import math
from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, check_lengths, check_patch_divisible, scales_from_strides
from nnunet_ext.architectures.plans import cumulative_strides, deepest_first_strides
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from nnunet_ext.blocks.msf import MSFPyramid
from nnunet_ext.blocks.transformer import TransformerEncoder

# ---------------------------------------------------------------------------------------- encoder
class MISSUEncoder(nn.Module):
    """(B, C_in, Z, Y, X) -> [F_1, ..., F_L], F_i of shape (B, widths[i-1], S_i), S_1 = (Z, Y, X) and
    S_i = S_{i-1} / strides[i-2].

    Stem: plain conv3 C_in -> widths[0] (TransBTS's InitConv). Level i > 1 starts with a plain
    stride conv3 widths[i-2] -> widths[i-1]; every level then has ``depths[i-1]``
    pre-activation residual blocks (norm-ReLU-conv3, twice, plus identity).
    """

    def __init__(self, input_channels: int, widths: Sequence[int], strides: Sequence[Sequence[int]],
                 depths: Sequence[int], conv_op: Type[nn.Module] = nn.Conv3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.ReLU, nonlin_kwargs: dict | None = None):
        super().__init__()
        plain = dict(conv_op=conv_op, norm_op=None, nonlin=None)
        block = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                     nonlin_kwargs=nonlin_kwargs, bias=True, pre_norm=True)
        self.stem = ConvNormAct(input_channels, widths[0], 3, **plain)
        self.levels = nn.ModuleList()
        for i, (w, n) in enumerate(zip(widths, depths)):
            layers: list[nn.Module] = [] if i == 0 else [ConvNormAct(widths[i - 1], w, 3, strides[i - 1], **plain)]
            layers += [ResidualBlock(w, w, 3, 1, **block) for _ in range(n)]
            self.levels.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


# ------------------------------------------------------------------------------------- bottleneck
class TransformerBottleneck(nn.Module):
    """(B, C, z, y, x) -> (B, C, z, y, x) through N = z*y*x tokens of width d.

    norm -> ReLU -> 1x1x1 conv C -> d (the linear projection; TransBTS also normalises first), tokens
    (B, N, d), :class:`TransformerEncoder` (position embedding, pre-LN layers, LN), Linear d -> C,
    reshape back to the grid.
    """

    def __init__(self, channels: int, grid: Sequence[int], embed_dim: int = 512, depth: int = 4, num_heads: int = 8,
                 ffn_dim: int = 512, dropout: float = 0.1, attn_dropout: float = 0.1,
                 conv_op: Type[nn.Module] = nn.Conv3d, norm_op: Type[nn.Module] | None = nn.InstanceNorm3d,
                 norm_op_kwargs: dict | None = None, nonlin: Type[nn.Module] | None = nn.ReLU,
                 nonlin_kwargs: dict | None = None):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.in_proj = ConvNormAct(channels, embed_dim, 1, conv_op=conv_op, norm_op=norm_op,
                                   norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
                                   pre_norm=True)
        self.transformer = TransformerEncoder(embed_dim, math.prod(self.grid), depth, num_heads, ffn_dim, dropout,
                                              attn_dropout)
        self.out_proj = nn.Linear(embed_dim, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        if tuple(x.shape[2:]) != self.grid:
            raise ValueError(f"TransformerBottleneck: x must have a {list(self.grid)} grid (from the patch size the "
                             f"network was built for), got {list(x.shape[2:])}")
        t = self.in_proj(x).flatten(2).transpose(1, 2)  # (B, N, d)
        t = self.out_proj(self.transformer(t))  # (B, N, C)
        return t.transpose(1, 2).reshape(b, c, *self.grid)


# ---------------------------------------------------------------------------------------- decoder
class MISSUDecoder(nn.Module):
    """``forward(bottom, [F_1, ..., F_{L-1}])`` -> [D_1, ..., D_{L-1}], highest resolution first.

    From the deepest level up: D_i = ReLU(norm(conv3(cat(F_i, Up_i(D_{i+1}))))) with D_L = bottom and
    Up_i a transposed conv (kernel = stride = strides[i-1]) widths[i] -> widths[i-1].
    """

    def __init__(self, widths: Sequence[int], strides: Sequence[Sequence[int]], conv_op: Type[nn.Module] = nn.Conv3d,
                 transp_op: Type[nn.Module] = nn.ConvTranspose3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.ReLU, nonlin_kwargs: dict | None = None):
        super().__init__()
        n = len(strides)
        self.ups = nn.ModuleList(UpsampleBlock(widths[i + 1], widths[i], strides[i], transp_op, bias=True)
                                 for i in range(n))
        # the paper: "conv + ReLU" per level; we add nnU-Net's instance norm (negligible parameters)
        self.convs = nn.ModuleList(ConvNormAct(2 * widths[i], widths[i], 3, conv_op=conv_op, norm_op=norm_op,
                                               norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                                               nonlin_kwargs=nonlin_kwargs) for i in range(n))

    def forward(self, bottom: torch.Tensor, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x, out = bottom, []
        for i in reversed(range(len(self.ups))):
            x = self.convs[i](torch.cat((skips[i], self.ups[i](x)), dim=1))
            out.append(x)
        return out[::-1]


# ---------------------------------------------------------------------------------------- network
@register_architecture("missu", trainer="MISSUTrainer", title="MISSU",
                       paper="Wang et al., MISSU: 3D Medical Image Segmentation via Self-distilling TransUNet, "
                             "IEEE TMI 2023",
                       downsamplings=3, stride_rule=deepest_first_strides)
class MISSU(ExtNetwork):
    """MISSU (Wang et al., IEEE TMI 2023): (B, C_in, Z, Y, X) -> logits (B, K, Z, Y, X), or with deep
    supervision the list at 1, 1/s_1, 1/(s_1 s_2) resolution (highest first).

    In training mode ``forward`` also stores ``distillation_features = (F, O)``: the local features
    F_1..F_3 (shapes (B, widths[i], S_i)) and the MSF outputs O_1..O_3 of the same shapes, for the
    self-distillation loss (the trainer collects them with :meth:`take_distillation_features`). In
    eval mode MSF is not run and ``distillation_features`` is None.

    Args:
        input_channels: C_in.
        num_classes: K.
        patch_size: (Z, Y, X) of the training patch; fixes the token count N and the position embedding.
        strides: the down-sampling strides between levels, shallowest first (paper: 3 x (2, 2, 2)).
        widths: encoder widths per level (paper: 16, 32, 64, 128).
        depths: residual blocks per encoder level (our choice (1, 1, 1, 1), see module doc).
        embed_dim: transformer width d (paper: 512).
        transformer_depth: transformer layers (paper: 4).
        num_heads: attention heads (paper: 8).
        ffn_dim: FFN hidden width (our choice d = 512 by parameter count, see module doc).
        dropout, attn_dropout: transformer dropouts (0.1, as in the authors' TransBTS-based code).
        conv_init: ``"he"`` (nnU-Net's He init) or ``"pytorch"`` (PyTorch's default, as TransBTS's
            code keeps it). As in SegResNet, the encoder's residual stream is never normalised and the
            stem and stride-2 convs act on it directly, so He init doubles its variance at each; unlike
            SegResMamba, MISSU's decoder normalises after every concatenation, and with nnU-Net's recipe
            He init trained at least as well (README), so it stays the default.
        deep_supervision: return the list of outputs.
    """

    patch_sized = True

    training_only_modules = ("msf",)

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 strides: Sequence[Sequence[int]] = ((2, 2, 2),) * 3, widths: Sequence[int] = (16, 32, 64, 128),
                 depths: Sequence[int] = (1, 1, 1, 1), embed_dim: int = 512, transformer_depth: int = 4,
                 num_heads: int = 8, ffn_dim: int = 512, dropout: float = 0.1, attn_dropout: float = 0.1,
                 deep_supervision: bool = True, conv_op: Type[nn.Module] = nn.Conv3d,
                 transp_op: Type[nn.Module] = nn.ConvTranspose3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.ReLU, nonlin_kwargs: dict | None = None,
                 conv_init: str = "he"):
        super().__init__(deep_supervision, key_to_lpe="bottleneck.transformer.pos_embed")
        strides = tuple(tuple(int(v) for v in s) for s in strides)
        check_lengths("MISSU", widths, depths=(depths, len(widths)), strides=(strides, len(widths) - 1))
        total = check_patch_divisible("MISSU", patch_size, strides)
        if embed_dim % num_heads:
            raise ValueError(f"MISSU: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        # our choice: instance norm (nnU-Net's, at its batch size 2) where the paper's TransBTS lineage
        # uses batch norm (at batch 4); ReLU as in the paper
        ops = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                   nonlin_kwargs=nonlin_kwargs)
        grid = tuple(p // t for p, t in zip(patch_size, total))
        self.encoder = MISSUEncoder(input_channels, widths, strides, depths, **ops)
        self.bottleneck = TransformerBottleneck(widths[-1], grid, embed_dim, transformer_depth, num_heads, ffn_dim,
                                                dropout, attn_dropout, **ops)
        self.decoder = MISSUDecoder(widths, strides, transp_op=transp_op, **ops)
        self.heads = SegmentationHeads(widths[:-1], num_classes, conv_op)
        self.msf = MSFPyramid(widths[:-1], strides[:-1], conv_op=conv_op)

        self.deep_supervision_scales = scales_from_strides([(1, 1, 1)] + cumulative_strides(strides[:-1]))
        self.distillation_features: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None = None
        self.initialize_convolutions(conv_init)  # the transformer's Linears keep their own

    def forward(self, x: torch.Tensor):
        features = self.encoder(x)
        local = features[:-1]
        if self.training:
            self.distillation_features = (tuple(local), tuple(self.msf(local)))
        else:
            self.distillation_features = None
        decoded = self.decoder(self.bottleneck(features[-1]), local)
        return self.heads(decoded, self.deep_supervision)

    def take_distillation_features(self):
        """The (F, O) pair stored by the last training-mode forward, or None; clears it (frees memory)."""
        out, self.distillation_features = self.distillation_features, None
        return out
