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
- Parity: the public code at 4 -> 4 channels has 67.42 M parameters (67 416 196); ours adds our
  affine InstanceNorms, the TSMamba MLPs' LayerNorms and the three extra heads.
- Strides from a plan: :func:`~nnunet_ext.architectures.plans.stem_first_strides` with the
  stem and 3 down-samplings. The stem's kernel is 7 (padding 3) along strided axes and 1 along
  axes it does not stride (the plan never pools them; our choice: along such an axis there is no
  patch to embed, and the GSC's 3^3 convolutions right after it provide the local context).
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, StagedEncoder, check_lengths, scales_from_strides
from nnunet_ext.architectures.plans import cumulative_strides, stem_first_strides
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from nnunet_ext.blocks.gsc import TSMambaBlock


# ---------------------------------------------------------------------------- encoder
class SegMambaEncoder(StagedEncoder):
    """Stem + 4 TSMamba stages: (B, C_in, Z, Y, X) -> [stage outputs], stage i of shape
    (B, widths[i], Z / S_i, Y / S_i, X / S_i) with S_i the cumulative stride up to stage i."""

    def __init__(self, input_channels: int, strides: Sequence[Sequence[int]], widths: Sequence[int],
                 depths: Sequence[int], stem_kernel: int, d_state: int, d_conv: int, expand: int,
                 mlp_ratio: int, conv_op: Type[nn.Module], norm_op: Type[nn.Module] | None,
                 norm_op_kwargs: dict | None, gsc_kwargs: dict):
        super().__init__()
        self.strides = tuple(tuple(int(v) for v in s) for s in strides)
        self.widths = tuple(int(w) for w in widths)
        stem_k = tuple(stem_kernel if s > 1 else 1 for s in self.strides[0])
        # the public code's stem is a plain conv (no norm, no activation)
        self.stem = ConvNormAct(input_channels, widths[0], stem_k, self.strides[0], conv_op=conv_op,
                                norm_op=None, nonlin=None, bias=True, padding=tuple(k // 2 for k in stem_k))
        # norm -> conv (kernel = stride), as in the public code
        self.downsamples = nn.ModuleList(
            ConvNormAct(widths[i - 1], widths[i], s, s, conv_op=conv_op, norm_op=norm_op,
                        norm_op_kwargs=norm_op_kwargs, nonlin=None, bias=True, pre_norm=True, padding=0)
            for i, s in enumerate(self.strides[1:], start=1))
        self.stages = nn.ModuleList(
            TSMambaBlock(w, d, mlp_ratio, d_state, d_conv, expand, conv_op=conv_op, gsc_kwargs=gsc_kwargs)
            for w, d in zip(widths, depths))


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
        f = encoder.widths
        widths = [*f, hidden_size]  # decoder width per scale: full, 1/S_0, ..., bottleneck
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
@register_architecture(
    "segmamba", trainer="SegMambaTrainer", title="SegMamba",
    paper="Xing et al., SegMamba: Long-range Sequential Modeling Mamba for 3D Medical Image Segmentation, "
          "MICCAI 2024",
    downsamplings=4, stride_rule=stem_first_strides, uses_scan=True)
class SegMamba(ExtNetwork):
    """SegMamba: (B, C_in, Z, Y, X) -> (B, K, Z, Y, X) logits, or with ``deep_supervision`` a list
    of 4 (input resolution, then after the first 1, 2 and 3 down-samplings).

    Args:
        input_channels: C_in.
        num_classes: K.
        strides: one per stage: the stem's, then the down-sampling into each further stage
            (paper: 4 x (2, 2, 2)).
        widths: stage widths (paper: 48, 96, 192, 384).
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
                 strides: Sequence[Sequence[int]] = ((2, 2, 2),) * 4,  # paper: stem + 3, stride 2 each
                 widths: Sequence[int] = (48, 96, 192, 384),  # paper: feature sizes of the 4 stages
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
        # every module that reads the raw input: the stem and the decoder's full-resolution block
        super().__init__(deep_supervision, keys_to_in_proj=("encoder.stem.conv", "decoder.input_block.conv1.conv",
                                                            "decoder.input_block.skip.conv"))
        check_lengths("SegMamba", widths, strides=(strides, len(widths)), depths=(depths, len(widths)))
        gsc_kwargs = dict(gate=gsc_gate, spatial_convs=gsc_spatial_convs, norm_op=norm_op,
                          norm_op_kwargs=norm_op_kwargs, nonlin=gsc_nonlin)
        self.encoder = SegMambaEncoder(input_channels, strides, widths, depths, stem_kernel, d_state, d_conv,
                                       expand, mlp_ratio, conv_op, norm_op, norm_op_kwargs, gsc_kwargs)
        self.decoder = SegMambaDecoder(self.encoder, input_channels, num_classes, hidden_size, conv_op, transp_op,
                                       norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        # outputs at scale 0 (full) and the cumulative strides of the first 3 down-samplings
        self.deep_supervision_scales = scales_from_strides([(1, 1, 1)] + cumulative_strides(strides)[:len(widths) - 1])
        self.apply(self.initialize)

    def forward(self, x: torch.Tensor):
        return self.decoder(x, self.encoder(x), self.deep_supervision)
