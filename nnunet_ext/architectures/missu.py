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

Size choices where the paper is silent (counted at 128^3, 4 channels, 4 classes with ``nnunet-ext
summary``; the paper reports 10.50 M parameters and 132.11 G MACs). Fixed by the paper's
description: attention 4 x (4 d^2 + 4 d) = 4.20 M, position embedding N d = 4096 x 512 = 2.10 M,
1x1x1 projections 0.13 M. Free: the FFN width and the residual blocks per level. We take one block
per level (encoder 1.47 M) and FFN width d = 512 (4 x 2 d^2 = 2.10 M): **10.39 M inference
parameters (-1.1 %)**. Alternatives: FFN 2d 12.49 M (+19 %), FFN 4d 16.69 M, TransBTS's (1, 2, 2, 4)
blocks 13.32 M even with FFN d. MSF adds 0.51 M training-only parameters (10.90 M in total).

MACs at 128^3: our counter gives 212.1 G, of which 143.4 G in convolutions and linear layers (+8.5 %
on the paper's 132.11 G) and 68.7 G in the attention products Q K^T and A V (4 layers x 2 N^2 d,
N = 4096). The paper's figure fits a counter that sees only conv/linear layers (thop/ptflops
style): by our rough count TransBTS's conv/linear layers at 128^3 come to about 200 G, near the
208 G the paper lists for it.
"""

from __future__ import annotations

import math
from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, scales_from_strides
from nnunet_ext.architectures.plans import PlanSpec, Shape, cumulative_strides, deepest_first_strides, stride_product
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from nnunet_ext.blocks.msf import MSFPyramid
from nnunet_ext.blocks.transformer import TransformerEncoder

# ---------------------------------------------------------------------------------------- encoder
class MISSUEncoder(nn.Module):
    """(B, C_in, Z, Y, X) -> [F_1, ..., F_L], F_i of shape (B, widths[i-1], S_i), S_1 = (Z, Y, X) and
    S_i = S_{i-1} / strides[i-2].

    Stem: plain conv3 C_in -> widths[0] (TransBTS's InitConv). Level i > 1 starts with a plain
    stride conv3 widths[i-2] -> widths[i-1]; every level then has ``blocks_per_level[i-1]``
    pre-activation residual blocks (norm-ReLU-conv3, twice, plus identity).
    """

    def __init__(self, input_channels: int, widths: Sequence[int], strides: Sequence[Sequence[int]],
                 blocks_per_level: Sequence[int], conv_op: Type[nn.Module] = nn.Conv3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.ReLU, nonlin_kwargs: dict | None = None):
        super().__init__()
        assert len(widths) == len(blocks_per_level) == len(strides) + 1, \
            f"widths ({len(widths)}) and blocks_per_level ({len(blocks_per_level)}) need one entry per level, " \
            f"strides ({len(strides)}) one per level transition"
        self.widths, self.strides = tuple(widths), tuple(tuple(s) for s in strides)
        plain = dict(conv_op=conv_op, norm_op=None, nonlin=None)
        block = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                     nonlin_kwargs=nonlin_kwargs, bias=True, pre_norm=True)
        self.stem = ConvNormAct(input_channels, widths[0], 3, **plain)
        self.levels = nn.ModuleList()
        for i, (w, n) in enumerate(zip(widths, blocks_per_level)):
            layers: list[nn.Module] = [] if i == 0 else [ConvNormAct(widths[i - 1], w, 3, self.strides[i - 1], **plain)]
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

    def __init__(self, channels: int, grid: Sequence[int], embed_dim: int = 512, depth: int = 4, heads: int = 8,
                 ffn_dim: int = 512, dropout: float = 0.1, attn_dropout: float = 0.1,
                 conv_op: Type[nn.Module] = nn.Conv3d, norm_op: Type[nn.Module] | None = nn.InstanceNorm3d,
                 norm_op_kwargs: dict | None = None, nonlin: Type[nn.Module] | None = nn.ReLU,
                 nonlin_kwargs: dict | None = None):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.in_proj = ConvNormAct(channels, embed_dim, 1, conv_op=conv_op, norm_op=norm_op,
                                   norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
                                   pre_norm=True)
        self.transformer = TransformerEncoder(embed_dim, math.prod(self.grid), depth, heads, ffn_dim, dropout,
                                              attn_dropout)
        self.out_proj = nn.Linear(embed_dim, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        assert tuple(x.shape[2:]) == self.grid, \
            f"bottleneck expects a {list(self.grid)} grid (from the plan's patch size), got {list(x.shape[2:])}"
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
        strides: the three down-sampling strides (from the plan, see :func:`missu_strides_from_plan`).
        widths: encoder widths per level (paper: 16, 32, 64, 128).
        blocks_per_level: residual blocks per encoder level (our choice (1, 1, 1, 1), see module doc).
        embed_dim: transformer width d (paper: 512).
        depth: transformer layers (paper: 4).
        heads: attention heads (paper: 8).
        ffn_dim: FFN hidden width (our choice d = 512 by parameter count, see module doc).
        dropout, attn_dropout: transformer dropouts (0.1, as in the authors' TransBTS-based code).
        deep_supervision: return the list of outputs.
    """

    training_only_modules = ("msf",)

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 strides: Sequence[Sequence[int]] = ((2, 2, 2),) * 3, widths: Sequence[int] = (16, 32, 64, 128),
                 blocks_per_level: Sequence[int] = (1, 1, 1, 1), embed_dim: int = 512, depth: int = 4,
                 heads: int = 8, ffn_dim: int = 512, dropout: float = 0.1, attn_dropout: float = 0.1,
                 deep_supervision: bool = True, conv_op: Type[nn.Module] = nn.Conv3d,
                 transp_op: Type[nn.Module] = nn.ConvTranspose3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.ReLU, nonlin_kwargs: dict | None = None):
        super().__init__()
        strides = tuple(tuple(int(v) for v in s) for s in strides)
        assert len(strides) == len(widths) - 1, \
            f"need {len(widths) - 1} strides for {len(widths)} levels, got {len(strides)}"
        total = stride_product(strides)
        assert all(p % t == 0 for p, t in zip(patch_size, total)), \
            f"patch_size {list(patch_size)} must be divisible by the total stride {list(total)}"
        # our choice: instance norm (nnU-Net's, at its batch size 2) where the paper's TransBTS lineage
        # uses batch norm (at batch 4); ReLU as in the paper
        ops = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                   nonlin_kwargs=nonlin_kwargs)
        self.strides = strides
        self.grid = tuple(p // t for p, t in zip(patch_size, total))
        self.encoder = MISSUEncoder(input_channels, widths, strides, blocks_per_level, **ops)
        self.bottleneck = TransformerBottleneck(widths[-1], self.grid, embed_dim, depth, heads, ffn_dim, dropout,
                                                attn_dropout, **ops)
        self.decoder = MISSUDecoder(widths, strides, transp_op=transp_op, **ops)
        self.heads = SegmentationHeads(widths[:-1], num_classes, conv_op)
        self.msf = MSFPyramid(widths[:-1], strides[:-1], conv_op=conv_op)

        self.deep_supervision = deep_supervision
        self.deep_supervision_scales = scales_from_strides([(1, 1, 1)] + cumulative_strides(strides[:-1]))
        self.distillation_features: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None = None

        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.conv",)
        self.key_to_lpe = "bottleneck.transformer.pos_embed"
        self.apply(self.initialize)

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


# ---------------------------------------------------------------------------------- from the plan
def missu_strides_from_plan(spec: PlanSpec, downsamplings: int = 3) -> tuple[Shape, ...]:
    """MISSU's three down-sampling strides (shallowest first) from an nnU-Net plan.

    Rule (the same as SegResMamba's and SegMamba's): per axis, count the factors of 2 in the plan's
    total stride (product of nnU-Net's ``pool_op_kernel_sizes``) and hand them out from the deepest
    down-sampling upwards, at most one (stride 2) per down-sampling; the others get stride 1. So
    an axis the planner pools less (thick slices, short extent) is strided only in the deepest
    levels, as nnU-Net does, and nnU-Net's usual 5-6 poolings are capped at MISSU's 2^3 per axis.

    Examples: 128^3 isotropic, total (32, 32, 32) -> 3 x (2, 2, 2); 20x192x160 at 5x0.8x0.8 mm,
    total (4, 32, 32) -> (1, 2, 2), (2, 2, 2), (2, 2, 2).
    """
    return deepest_first_strides(spec.total_stride, downsamplings)


def missu_divisor(spec: PlanSpec) -> Shape:
    """What the patch must be divisible by: the product of :func:`missu_strides_from_plan`."""
    return stride_product(missu_strides_from_plan(spec))


@register_architecture("missu", trainer="MISSUTrainer", title="MISSU",
                       paper="Wang et al., MISSU: 3D Medical Image Segmentation via Self-distilling TransUNet, "
                             "IEEE TMI 2023",
                       divisor=missu_divisor)
def build_missu(spec: PlanSpec, input_channels: int, num_classes: int, deep_supervision: bool = True) -> MISSU:
    return MISSU(input_channels, num_classes, spec.patch_size, strides=missu_strides_from_plan(spec),
                 deep_supervision=deep_supervision)
