"""SegMamba (Xing et al., "SegMamba: Long-range Sequential Modeling Mamba for 3D Medical Image
Segmentation", MICCAI 2024), sized from nnU-Net's plans.

(B, C_in, Z, Y, X) -> logits (B, K, Z, Y, X) [or a list at 4 decoder scales, highest first].

Network (top-down, as in the paper's figure):

- Encoder: stem conv (kernel 7, stride 2, padding 3) -> 48 channels, then four stages of
  :class:`~nnunet_ext.blocks.gsc.TSMambaBlock` (widths 48/96/192/384, depth 2 each) with a
  norm -> stride-2 conv (kernel = stride) between stages. Every ToM reads its three token orders
  from its own feature map's shape; nothing depends on a fixed slice count.
- Decoder (as the public code, UNETR-style): residual blocks on the raw input (-> 48, full
  resolution) and on each stage output (stage i -> width of stage i+1; the last -> 768, the
  bottleneck); four up-blocks (transposed conv with kernel = stride, concatenate the skip,
  residual block), a residual block at full resolution and a 1^3 output conv.
- Deep supervision: the public code has a single output. nnU-Net's loss wants one per scale, so
  we add 1^3 heads on the up-block outputs after the first 1, 2 and 3 down-samplings (1/2, 1/4,
  1/8 at the paper's strides; our choice, +2.7 k parameters at 4 classes). The full-resolution
  head is the paper's output conv.
- Parity (4 -> 4 channels, 128^3): 67.44 M parameters, 1.47 TMACs; the public code has 67.42 M
  (67 416 196): the difference is our affine InstanceNorms (19.9 k), the TSMamba MLPs' LayerNorms
  (1.4 k) and the three extra heads (2.7 k).

Down-sampling strides from the plan (SegMamba always down-samples 4 times: the stem + 3):

- Per axis a, let k_a be the number of factors 2 in the plan's total stride (the product of
  nnU-Net's ``pool_op_kernel_sizes``) and m_a = min(k_a, 4); let K = max_a m_a.
- The stem strides every axis with m_a >= 1 by 2: the paper's stem always embeds with stride 2,
  and a TSMamba stage at full resolution would scan 8x the tokens.
- Only down-samplings 0..K-1 stride; an axis's other m_a - 1 factors go to the deepest of them
  (:func:`~nnunet_ext.architectures.plans.stem_first_strides`). Down-samplings K..3 have stride 1.
- So an isotropic plan with >= 4 poolings gives the paper's (2, 2, 2) x 4. A plan with fewer
  poolings keeps the paper's halving as the widths double for as long as it pools, and its
  deepest stages share the plan's coarsest resolution (where nnU-Net's own bottleneck is) rather
  than leaving the wider stages at high resolution: our choice, because each stage is twice as
  wide as the one before (about 4x the convolution work per voxel). An anisotropic axis (thick slices, pooled late by nnU-Net, e.g.
  28 x 256 x 256 with in-plane-only early strides) is strided by the stem and otherwise only at
  the deepest down-samplings, as nnU-Net does.
- The network's total stride is the per-axis product 2^m_a (:func:`segmamba_divisor`), which
  divides the plan's total stride, so every patch nnU-Net plans is valid.
- The stem's kernel is 7 (padding 3) along strided axes and 1 along axes it does not stride (the
  plan never pools them; our choice: along such an axis there is no patch to embed, and the GSC's
  3^3 convolutions right after it provide the local context).
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, scales_from_strides
from nnunet_ext.architectures.plans import PlanSpec, Shape, cumulative_strides, stem_first_strides, stride_product
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from nnunet_ext.blocks.gsc import TSMambaBlock

#: SegMamba's number of down-samplings (stem + 3 between the 4 stages)
NUM_DOWNSAMPLINGS = 4


# ---------------------------------------------------------------------------- sizes from the plan
def segmamba_strides(spec: PlanSpec, num_downsamplings: int = NUM_DOWNSAMPLINGS) -> list[Shape]:
    """Strides of the stem and the 3 inter-stage down-samplings from the plan (rule in the module
    docstring): per axis, min(factors of 2 in the plan's total stride, 4) strides of 2, the first at
    the stem, the rest at the deepest of the down-samplings the plan needs.

    ``PlanSpec.from_patch((28, 256, 256), spacing=(3, 0.8, 0.8))`` -> [(2,2,2), (1,2,2), (1,2,2), (2,2,2)];
    ``PlanSpec.from_patch((40, 48, 40), spacing=(4, 4, 4))`` -> [(2,2,2), (2,2,2), (2,2,2), (1,1,1)].
    """
    return list(stem_first_strides(spec.total_stride, num_downsamplings))


def segmamba_divisor(spec: PlanSpec) -> Shape:
    """What the patch must be divisible by: the per-axis product of :func:`segmamba_strides`."""
    return stride_product(segmamba_strides(spec))



# ---------------------------------------------------------------------------- encoder
class SegMambaEncoder(nn.Module):
    """Stem + 4 TSMamba stages: (B, C_in, Z, Y, X) -> [stage outputs], stage i of shape
    (B, features[i], Z / S_i, Y / S_i, X / S_i) with S_i the cumulative stride up to stage i."""

    def __init__(self, input_channels: int, strides: Sequence[Sequence[int]], features: Sequence[int],
                 depths: Sequence[int], stem_kernel: int, d_state: int, d_conv: int, expand: int,
                 mlp_ratio: int, conv_op: Type[nn.Module], norm_op: Type[nn.Module] | None,
                 norm_op_kwargs: dict | None, gsc_kwargs: dict):
        super().__init__()
        if not (len(strides) == len(features) == len(depths)):
            raise ValueError(f"strides, features and depths need one entry per stage, got {len(strides)}, "
                             f"{len(features)}, {len(depths)}")
        self.strides = [tuple(s) for s in strides]
        self.features = list(features)
        stem_k = tuple(stem_kernel if s > 1 else 1 for s in self.strides[0])
        # the public code's stem is a plain conv (no norm, no activation)
        self.stem = ConvNormAct(input_channels, features[0], stem_k, self.strides[0], conv_op=conv_op,
                                norm_op=None, nonlin=None, bias=True, padding=tuple(k // 2 for k in stem_k))
        # norm -> conv (kernel = stride), as in the public code
        self.downsamples = nn.ModuleList(
            ConvNormAct(features[i - 1], features[i], s, s, conv_op=conv_op, norm_op=norm_op,
                        norm_op_kwargs=norm_op_kwargs, nonlin=None, bias=True, pre_norm=True, padding=0)
            for i, s in enumerate(self.strides[1:], start=1))
        self.stages = nn.ModuleList(
            TSMambaBlock(f, d, mlp_ratio, d_state, d_conv, expand, conv_op=conv_op, gsc_kwargs=gsc_kwargs)
            for f, d in zip(features, depths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        x = self.stages[0](self.stem(x))
        skips.append(x)
        for down, stage in zip(self.downsamples, self.stages[1:]):
            x = stage(down(x))
            skips.append(x)
        return skips


# ---------------------------------------------------------------------------- decoder
class SegMambaDecoder(nn.Module):
    """UNETR-style decoder built from the encoder (widths and strides are read from it).

    ``forward(x, skips, deep_supervision)``: x the raw input (B, C_in, Z, Y, X), skips the encoder's
    4 outputs -> logits (B, K, Z, Y, X), or a list of 4: at the input resolution and after the
    first 1, 2 and 3 down-samplings (highest resolution first).
    """

    def __init__(self, encoder: SegMambaEncoder, input_channels: int, num_classes: int, hidden_size: int,
                 conv_op: Type[nn.Module], transp_op: Type[nn.Module], norm_op: Type[nn.Module] | None,
                 norm_op_kwargs: dict | None, nonlin: Type[nn.Module] | None, nonlin_kwargs: dict | None):
        super().__init__()
        f = encoder.features
        widths = [f[0], *f[1:], hidden_size]  # decoder width per scale: full, 1/S_0, ..., bottleneck
        res = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                   nonlin_kwargs=nonlin_kwargs)
        self.input_block = ResidualBlock(input_channels, widths[0], 3, **res)
        # stage i output (f[i]) -> width of the next scale (f[i+1]; the last -> hidden_size)
        self.skip_blocks = nn.ModuleList(ResidualBlock(f[i], widths[i + 1], 3, **res) for i in range(len(f)))
        # up-block j: scale j+1 -> scale j by the stride that took scale j to j+1; then concat + ResBlock
        self.upsamples = nn.ModuleList(UpsampleBlock(widths[j + 1], widths[j], encoder.strides[j], transp_op)
                                       for j in range(len(f)))
        self.up_blocks = nn.ModuleList(ResidualBlock(2 * widths[j], widths[j], 3, **res) for j in range(len(f)))
        self.final_block = ResidualBlock(widths[0], widths[0], 3, **res)
        # heads: full resolution (the paper's output conv) + the up-block outputs at 1/2, 1/4, 1/8
        self.heads = SegmentationHeads(widths[:len(f)], num_classes, conv_op)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor], deep_supervision: bool):
        features = [self.input_block(x)] + [blk(s) for blk, s in zip(self.skip_blocks, skips)]
        y = features[-1]
        outs = []
        for j in reversed(range(len(self.up_blocks))):
            y = self.up_blocks[j](torch.cat([self.upsamples[j](y), features[j]], dim=1))
            outs.append(y)
        outs = outs[::-1]  # highest resolution first
        outs[0] = self.final_block(outs[0])
        return self.heads(outs, deep_supervision)


# ---------------------------------------------------------------------------- the network
class SegMamba(ExtNetwork):
    """SegMamba: (B, C_in, Z, Y, X) -> (B, K, Z, Y, X) logits, or with ``deep_supervision`` a list
    of 4 (input resolution, then after the first 1, 2 and 3 down-samplings).

    Args:
        input_channels: C_in.
        num_classes: K.
        strides: stride of the stem and of the 3 down-samplings (see :func:`segmamba_strides`).
        features: stage widths (paper: 48, 96, 192, 384).
        depths: Mamba layers per stage (paper: 2, 2, 2, 2).
        hidden_size: width of the bottleneck residual block (public code: 768).
        stem_kernel: stem kernel along strided axes (paper: 7).
        d_state, d_conv, expand: Mamba sizes (paper/Mamba: 16, 4, 2).
        mlp_ratio: TSMamba MLP hidden width / C (paper: 2).
        gsc_gate: ``"product"`` (paper) or ``"sum"`` (public code).
        gsc_spatial_convs: 3^3 conv blocks in the GSC's spatial branch (public code: 2).
        deep_supervision: return the list of outputs.
        conv_op, transp_op, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: ops of the stem,
            down-samplings and decoder (public code: InstanceNorm, LeakyReLU 0.01 as MONAI's blocks;
            our InstanceNorms are affine, as nnU-Net's, the public code's are not: +19.9 k parameters).
        gsc_nonlin: the GSC's activation (public code: ReLU).
    """

    def __init__(self, input_channels: int, num_classes: int,
                 strides: Sequence[Sequence[int]] = ((2, 2, 2),) * NUM_DOWNSAMPLINGS,
                 features: Sequence[int] = (48, 96, 192, 384),  # paper: feature sizes of the 4 stages
                 depths: Sequence[int] = (2, 2, 2, 2),  # paper: TSMamba depth per stage
                 hidden_size: int = 768,  # public code: bottleneck block 384 -> 768
                 stem_kernel: int = 7,  # paper: 7x7x7 stem, stride 2, padding 3
                 d_state: int = 16, d_conv: int = 4, expand: int = 2,  # Mamba defaults
                 mlp_ratio: int = 2,  # paper: MLP C -> 2C -> C
                 gsc_gate: str = "product",  # paper: multiplicative gate (public code sums)
                 gsc_spatial_convs: int = 2,  # public code: two 3^3 conv blocks in the GSC
                 deep_supervision: bool = True,
                 conv_op: Type[nn.Module] = nn.Conv3d, transp_op: Type[nn.Module] = nn.ConvTranspose3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.LeakyReLU, nonlin_kwargs: dict | None = None,
                 gsc_nonlin: Type[nn.Module] | None = nn.ReLU):
        super().__init__()
        if len(strides) != len(features):
            raise ValueError(f"strides needs one entry per stage ({len(features)}), got {len(strides)}")
        gsc_kwargs = dict(gate=gsc_gate, spatial_convs=gsc_spatial_convs, norm_op=norm_op,
                          norm_op_kwargs=norm_op_kwargs, nonlin=gsc_nonlin)
        self.encoder = SegMambaEncoder(input_channels, strides, features, depths, stem_kernel, d_state, d_conv,
                                       expand, mlp_ratio, conv_op, norm_op, norm_op_kwargs, gsc_kwargs)
        self.decoder = SegMambaDecoder(self.encoder, input_channels, num_classes, hidden_size, conv_op, transp_op,
                                       norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        self.deep_supervision = deep_supervision
        # outputs at scale 0 (full) and the cumulative strides of the first 3 down-samplings
        self.deep_supervision_scales = scales_from_strides([(1, 1, 1)] + cumulative_strides(strides)[:len(features) - 1])
        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.stem"
        # every module that reads the raw input
        self.keys_to_in_proj = ("encoder.stem.conv", "decoder.input_block.conv1.conv",
                                "decoder.input_block.skip.conv")
        self.apply(self.initialize)

    def forward(self, x: torch.Tensor):
        return self.decoder(x, self.encoder(x), self.deep_supervision)


@register_architecture(
    "segmamba", trainer="SegMambaTrainer", title="SegMamba",
    paper="Xing et al., SegMamba: Long-range Sequential Modeling Mamba for 3D Medical Image Segmentation, "
          "MICCAI 2024",
    divisor=segmamba_divisor)
def build_segmamba(spec: PlanSpec, input_channels: int, num_classes: int, deep_supervision: bool = True,
                   **kwargs) -> SegMamba:
    """SegMamba at the paper's sizes with the down-sampling strides derived from ``spec``."""
    return SegMamba(input_channels, num_classes, strides=segmamba_strides(spec),
                    deep_supervision=deep_supervision, **kwargs)
