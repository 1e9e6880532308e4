"""UNETR++ (Shaker et al., "UNETR++: Delving into Efficient and Accurate 3D Medical Image
Segmentation", IEEE TMI 2024), sized from nnU-Net's plans.

Reads like the paper's Fig. 1, top-down: the encoder (a patch-embedding stem, then four stages of
EPA blocks with stride-2 convs between them, plus a residual conv block on the raw input for the
full-resolution skip), the decoder (transposed conv, *add* the skip, EPA blocks; the last,
full-resolution stage a residual conv block) and deep-supervision heads at three scales. From a
plan, the stem and inner strides follow :func:`~nnunet_ext.architectures.plans.stem_remainder_strides`.
"""

from __future__ import annotations

import math
from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.architectures.base import (ExtNetwork, StagedEncoder, check_lengths, check_patch_divisible,
                                           scales_from_strides)
from nnunet_ext.architectures.plans import cumulative_strides, stem_remainder_strides
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from nnunet_ext.blocks.epa import EPABlock


def _down_conv(input_channels: int, output_channels: int, stride: Sequence[int]) -> ConvNormAct:
    """Conv with kernel = stride (no bias), then GroupNorm: the stem and the down-samplings.

    Our choice: GroupNorm with gcd(C_in, C_out) groups. It equals the public code's
    GroupNorm(C_in) wherever that is valid (stem with 1, 2 or 4 input channels; 32 -> 64 etc.)
    and stays valid for any input channel count (e.g. 3 or 5).
    """
    return ConvNormAct(input_channels, output_channels, tuple(stride), tuple(stride), padding=0, bias=False,
                       norm_op=nn.GroupNorm, norm_op_kwargs={"num_groups": math.gcd(input_channels, output_channels)},
                       nonlin=None)


class UNETRPPEncoder(StagedEncoder):
    """Stem + EPA stages, and the residual conv block on the raw input (UNETR++, Fig. 1 left).

    ``forward(x)`` with x (B, C_in, Z, Y, X) returns the skips, highest resolution first:
    ``[(B, feature_size, Z, Y, X), (B, widths[0], *sizes[0]), ..., (B, widths[-1], *sizes[-1])]``
    where ``sizes[i] = patch_size / (strides[0] * ... * strides[i])``.
    """

    def __init__(self, input_channels: int, patch_size: Sequence[int], strides: Sequence[Sequence[int]],
                 widths: Sequence[int], depths: Sequence[int], proj_sizes: Sequence[int], feature_size: int,
                 norm_op: Type[nn.Module], nonlin: Type[nn.Module], epa_kwargs: dict):
        super().__init__()
        self.strides = tuple(tuple(int(v) for v in s) for s in strides)
        self.widths = tuple(int(w) for w in widths)
        self.feature_size = int(feature_size)
        # cumulative stride of each stage, and its feature-map size (fixes the token count N)
        self.stage_strides = tuple(cumulative_strides(self.strides))
        self.stage_sizes = tuple(tuple(int(p) // c for p, c in zip(patch_size, cs)) for cs in self.stage_strides)

        self.input_block = ResidualBlock(input_channels, feature_size, 3, norm_op=norm_op, nonlin=nonlin, bias=False)
        self.stem = _down_conv(input_channels, widths[0], self.strides[0])
        self.downsamples = nn.ModuleList(_down_conv(widths[i], widths[i + 1], s)
                                         for i, s in enumerate(self.strides[1:]))
        self.stages = nn.ModuleList(
            nn.Sequential(*(EPABlock(self.stage_sizes[i], widths[i], proj_size=proj_sizes[i], **epa_kwargs)
                            for _ in range(depths[i])))
            for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.input_block(x), *super().forward(x)]


class UNETRPPDecoder(nn.Module):
    """Decoder built from the encoder (UNETR++, Fig. 1 right): per stage, from the deepest up,
    ``x = Blocks(TransposedConv(x) + skip)`` with EPA blocks at the encoder's resolutions and a
    residual conv block at full resolution; 1x1x1 heads.

    ``forward(skips, deep_supervision)`` returns (B, K, Z, Y, X) logits, or with
    ``deep_supervision`` a list of min(3, n_stages) logits: full resolution, then the resolutions
    of encoder stages 0 and 1.
    """

    def __init__(self, encoder: UNETRPPEncoder, num_classes: int, depths: Sequence[int], proj_size: int,
                 norm_op: Type[nn.Module], nonlin: Type[nn.Module], epa_kwargs: dict):
        super().__init__()
        w, f = encoder.widths, encoder.feature_size
        n = len(w)
        order = list(range(n - 2, -1, -1))  # decoder stages at encoder resolutions, deepest first
        self.ups = nn.ModuleList([UpsampleBlock(w[i + 1], w[i], encoder.strides[i + 1]) for i in order]
                                 + [UpsampleBlock(w[0], f, encoder.strides[0])])
        self.stages = nn.ModuleList(
            [nn.Sequential(*(EPABlock(encoder.stage_sizes[i], w[i], proj_size=proj_size, **epa_kwargs)
                             for _ in range(depths[i])))
             for i in order]
            # the full-resolution stage is a residual conv block, not EPA (paper's supplementary material)
            + [ResidualBlock(f, f, 3, norm_op=norm_op, nonlin=nonlin, bias=False)])
        self.num_outputs = min(3, n)
        self.heads = SegmentationHeads([f, *w[:self.num_outputs - 1]], num_classes)
        self.output_strides = ((1, 1, 1),) + encoder.stage_strides[:self.num_outputs - 1]

    def forward(self, skips: Sequence[torch.Tensor], deep_supervision: bool):
        x, features = skips[-1], []
        for up, stage, skip in zip(self.ups, self.stages, reversed(skips[:-1])):
            x = stage(up(x) + skip)
            features.append(x)
        features = features[::-1][:self.num_outputs]  # highest resolution first
        return self.heads(features, deep_supervision)


@register_architecture("unetr_pp", trainer="UNETRPPTrainer", title="UNETR++",
                       paper="Shaker et al., UNETR++, IEEE TMI 2024",
                       downsamplings=4, stride_rule=stem_remainder_strides)
class UNETRPP(ExtNetwork):
    """UNETR++: (B, C_in, Z, Y, X) -> (B, K, Z, Y, X) logits, or with deep supervision a list of
    3 logits at strides 1, strides[0] and strides[0] * strides[1] (highest resolution first).

    Defaults are the paper's Synapse setting (Shaker et al., IEEE TMI 2024; public code
    ``unetr_pp_synapse.py``; the paper reports 42.96 M parameters and 47.98 GMACs at 1 -> 14
    channels).

    Args:
        input_channels: C_in.
        num_classes: K.
        patch_size: (Z, Y, X) the network is built for (token counts and position embeddings follow).
        strides: one per stage: the patch-embedding stem's (kernel = stride; Synapse (2, 4, 4)), then
            the down-sampling into each further stage (paper: 3 x (2, 2, 2)).
        widths: channels of the encoder stages (paper: 32, 64, 128, 256). The decoder stages have
            the same widths (skips are added), so the paper's hidden size 256 is ``widths[-1]`` and
            its decoder widths feature_size * (8, 4, 2) are ``widths[2::-1]``.
        depths: EPA blocks per encoder stage (paper: 3 each).
        decoder_depths: EPA blocks per decoder stage at encoder resolution, highest resolution
            first (paper: 3 each).
        num_heads: h of every EPA (paper: 4).
        proj_sizes: p of the encoder stages' EPA (public code: 64, 64, 64, 32).
        decoder_proj_size: p of the decoder stages' EPA (public code: 64).
        feature_size: channels of the full-resolution skip and last decoder stage (paper: 16).
        attn_dropout: dropout on EPA's attention maps (public code: 0.15).
        conv_dropout: Dropout3d before each EPA block's 1x1x1 conv (public code: 0.1).
        layer_scale_init: initial layer scale of the EPA residual (paper: 1e-6).
        norm_op: norm of the full-resolution residual conv blocks (public code: instance norm).
        epa_norm_op: norm of the residual conv blocks inside EPA blocks (public code: batch norm).
        nonlin: activation of the conv blocks (public code: LeakyReLU 0.01).
        epa_conv_blocks, share_token_proj, fusion: EPA-block variants of the public code's other
            settings (ACDC and Lung: 2 conv blocks, separate E and F; BraTS: sum fusion), see
            :class:`~nnunet_ext.blocks.epa.EPABlock`. The defaults are the paper's (Synapse) block.
        deep_supervision: return the list of outputs.
    """

    patch_sized = True

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int] = (64, 128, 128),
                 strides: Sequence[Sequence[int]] = ((2, 4, 4), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                 widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (3, 3, 3, 3),
                 decoder_depths: Sequence[int] = (3, 3, 3), num_heads: int = 4,
                 proj_sizes: Sequence[int] = (64, 64, 64, 32), decoder_proj_size: int = 64, feature_size: int = 16,
                 attn_dropout: float = 0.15, conv_dropout: float = 0.1, layer_scale_init: float = 1e-6,
                 norm_op: Type[nn.Module] = nn.InstanceNorm3d, epa_norm_op: Type[nn.Module] = nn.BatchNorm3d,
                 nonlin: Type[nn.Module] = nn.LeakyReLU, epa_conv_blocks: int = 1, share_token_proj: bool = True,
                 fusion: str = "concat", deep_supervision: bool = True):
        # every conv that sees the input channels: the stem and the full-resolution residual block
        super().__init__(deep_supervision, keys_to_in_proj=("encoder.stem.conv", "encoder.input_block.conv1.conv",
                                                            "encoder.input_block.skip.conv"))
        n = len(widths)
        patch_size = tuple(patch_size)
        strides = tuple(tuple(s) for s in strides)
        if n < 2:
            raise ValueError(f"UNETRPP: widths needs at least 2 stages, got {list(widths)}")
        check_lengths("UNETRPP", widths, strides=(strides, n), depths=(depths, n), proj_sizes=(proj_sizes, n),
                      decoder_depths=(decoder_depths, n - 1))
        if len(patch_size) != 3 or any(len(s) != 3 for s in strides):
            raise ValueError(f"UNETRPP: patch_size and each stride need 3 entries (z, y, x), got "
                             f"patch_size {list(patch_size)}, strides {[list(s) for s in strides]}")
        check_patch_divisible("UNETRPP", patch_size, strides)
        if any(w % num_heads for w in widths):
            raise ValueError(f"UNETRPP: every width {list(widths)} must be divisible by num_heads ({num_heads})")

        epa_kwargs = dict(num_heads=num_heads, attn_dropout=attn_dropout, conv_dropout=conv_dropout,
                          layer_scale_init=layer_scale_init, norm_op=epa_norm_op, nonlin=nonlin,
                          conv_blocks=epa_conv_blocks, share_token_proj=share_token_proj, fusion=fusion)
        self.encoder = UNETRPPEncoder(input_channels, patch_size, strides, widths, depths, proj_sizes,
                                      feature_size, norm_op, nonlin, epa_kwargs)
        self.decoder = UNETRPPDecoder(self.encoder, num_classes, decoder_depths, decoder_proj_size, norm_op, nonlin,
                                      epa_kwargs)
        self.deep_supervision_scales = scales_from_strides(self.decoder.output_strides)
        # one position embedding per EPA block; key_to_lpe names the first
        self.key_to_lpe = next((name for name, _ in self.named_parameters() if name.endswith("pos_embed")), None)
        # Our choice: convolutions keep PyTorch's default init and EPA initialises its Linears
        # (trunc-normal 0.02). nnU-Net's He init (a=1e-2) on these convolutions makes the logits grow
        # through the decoder's un-normalised skip additions and residual blocks to hundreds or
        # thousands at initialisation (tests/architectures/test_init_scale.py), a start the loss
        # has to unlearn first.
