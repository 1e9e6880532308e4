"""SegResMamba (Das et al., "SegResMamba: An Efficient Architecture for 3D Medical Image
Segmentation", MIDL 2025, PMLR 301:280-292; arXiv 2503.07766), sized from nnU-Net's plans.

Reads top-down: a SegResNet-style residual encoder (a conv stem, four
levels of pre-activation residual blocks with stride-2 convs between them) whose coarser levels
use *convolution-Mamba mixed blocks* (a residual conv block, then z <- z + ToM(LN(z)) with
SegMamba's tri-oriented Mamba); a SegResNet decoder (1x1x1 conv halving the channels, upsampling,
*add* the skip, residual blocks); norm -> ReLU -> 1x1x1 heads at the three decoder scales. From a
plan, the three down-sampling strides follow
:func:`~nnunet_ext.architectures.plans.deepest_first_strides`.

Only the paper's summary is available to us and its released code contains no Mamba; the
choices made where it is silent are named arguments of :class:`SegResMamba`, each explained once.
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, StagedEncoder, check_lengths, scales_from_strides
from nnunet_ext.architectures.plans import cumulative_strides, deepest_first_strides
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from nnunet_ext.blocks.mamba import MambaLayer


class ConvMambaBlock(nn.Module):
    """The paper's convolution-Mamba mixed block: (B, C, Z, Y, X) -> (B, C, Z, Y, X),
    z <- ResidualBlock(z) (norm -> act -> conv3 -> norm -> act -> conv3 + z), then
    z <- z + ToM(LayerNorm(z)) (:class:`~nnunet_ext.blocks.mamba.MambaLayer`)."""

    def __init__(self, channels: int, conv_kwargs: dict, mamba_kwargs: dict):
        super().__init__()
        self.conv = ResidualBlock(channels, channels, 3, pre_norm=True, **conv_kwargs)
        self.mamba = MambaLayer(channels, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mamba(self.conv(x))


class SegResMambaEncoder(StagedEncoder):
    """Conv stem, then per level (stride-2 conv3 down-sampling from level 1 on) residual blocks,
    mixed conv-Mamba blocks at ``mamba_levels`` (SegResMamba's encoder).

    ``forward(x)`` with x (B, C_in, Z, Y, X) returns the skips, highest resolution first:
    ``[(B, widths[i], *patch / (strides[0] * ... * strides[i-1])) for i in range(len(widths))]``.
    """

    def __init__(self, input_channels: int, widths: Sequence[int], strides: Sequence[Sequence[int]],
                 depths: Sequence[int], mamba_levels: Sequence[int], conv_kwargs: dict, mamba_kwargs: dict):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.strides = tuple(tuple(int(v) for v in s) for s in strides)
        #: total stride of each level relative to the input
        self.level_strides = ((1, 1, 1), *cumulative_strides(self.strides))
        self.mamba_levels = tuple(sorted(int(i) for i in mamba_levels))

        # SegResNet: plain conv3 (no norm, no bias) into the first width
        self.stem = ConvNormAct(input_channels, widths[0], 3, norm_op=None, nonlin=None, bias=False)
        self.downsamples = nn.ModuleList(
            ConvNormAct(widths[i], widths[i + 1], 3, stride=s, norm_op=None, nonlin=None, bias=False)
            for i, s in enumerate(self.strides))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvMambaBlock(w, conv_kwargs, mamba_kwargs) if i in self.mamba_levels
                            else ResidualBlock(w, w, 3, pre_norm=True, **conv_kwargs)
                            for _ in range(depths[i])))
            for i, w in enumerate(self.widths))


class SegResMambaDecoder(nn.Module):
    """Decoder built from the encoder (SegResNet style): per level, from the deepest up,
    ``x = Blocks(Upsample(Conv1x1(x)) + skip)`` (the 1x1x1 conv halves the channels, the
    upsampling restores the level's stride); norm -> ReLU -> 1x1x1 heads.

    ``forward(skips, deep_supervision)`` returns (B, K, Z, Y, X) logits, or with
    ``deep_supervision`` a list of ``len(widths) - 1`` logits at the resolutions of encoder levels
    0, 1, ... (highest first).
    """

    def __init__(self, encoder: SegResMambaEncoder, num_classes: int, depths: Sequence[int], upsample_mode: str,
                 conv_kwargs: dict):
        super().__init__()
        w, n = encoder.widths, len(encoder.widths)
        order = list(range(n - 2, -1, -1))  # decoder levels, deepest first

        def up(i: int) -> nn.Sequential:
            s = encoder.strides[i]
            halve = ConvNormAct(w[i + 1], w[i], 1, norm_op=None, nonlin=None, bias=False)
            if upsample_mode == "deconv":
                return nn.Sequential(halve, UpsampleBlock(w[i], w[i], s))
            return nn.Sequential(halve, nn.Upsample(scale_factor=tuple(float(v) for v in s), mode="trilinear",
                                                    align_corners=False))

        self.ups = nn.ModuleList(up(i) for i in order)
        # depths[k] counts the blocks of the k-th decoder level, deepest first (SegResNet's blocks_up)
        self.stages = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(w[i], w[i], 3, pre_norm=True, **conv_kwargs) for _ in range(depths[k])))
            for k, i in enumerate(order))
        self.heads = SegmentationHeads(w[:n - 1], num_classes, norm_op=conv_kwargs["norm_op"],
                                       norm_op_kwargs=conv_kwargs["norm_op_kwargs"], nonlin=conv_kwargs["nonlin"],
                                       nonlin_kwargs=conv_kwargs["nonlin_kwargs"])
        self.output_strides = encoder.level_strides[:n - 1]

    def forward(self, skips: Sequence[torch.Tensor], deep_supervision: bool):
        x, features = skips[-1], []
        for up, stage, skip in zip(self.ups, self.stages, reversed(skips[:-1])):
            x = stage(up(x) + skip)
            features.append(x)
        return self.heads(features[::-1], deep_supervision)  # highest resolution first


@register_architecture("segresmamba", trainer="SegResMambaTrainer", title="SegResMamba",
                       paper="Das et al., SegResMamba: An Efficient Architecture for 3D Medical Image "
                             "Segmentation, MIDL 2025",
                       downsamplings=3, stride_rule=deepest_first_strides, uses_scan=True)
class SegResMamba(ExtNetwork):
    """SegResMamba: (B, C_in, Z, Y, X) -> (B, K, Z, Y, X) logits, or with deep supervision a list
    of ``len(widths) - 1`` logits at strides 1, strides[0], strides[0] * strides[1], ...
    (highest resolution first).

    Defaults are SegResNet's (Myronenko, BrainLes 2018; the paper builds on it): 16 channels
    doubling per level, (1, 2, 2, 4) blocks down, (1, 1, 1) up, GroupNorm(8), ReLU.

    Args:
        input_channels: C_in.
        num_classes: K.
        strides: stride of each down-sampling conv between levels, shallowest first (paper:
            3 x (2, 2, 2)); the stem does not down-sample.
        widths: channels per encoder level (SegResNet: init_filters 16, doubling).
        depths: residual (or mixed) blocks per encoder level (SegResNet's blocks_down).
        decoder_depths: residual blocks per decoder level, deepest first (SegResNet's blocks_up).
        mamba_levels: encoder levels whose blocks are all convolution-Mamba mixed blocks (so
            (1, 2, 3) gives 2 + 2 + 4 = 8 ToM layers). Our choice (the summary does not say): the
            three coarser levels. ToM at full resolution (Z*Y*X
            tokens, each scanned three times with expand * C channels and a d_state-wide state)
            is the memory cost the paper sets out to avoid; at levels 1-3 the token counts are
            1/8, 1/64 and 1/512 of it.
        upsample_mode: ``"nontrainable"`` (trilinear, SegResNet's default) or ``"deconv"``
            (transposed conv, kernel = stride).
        d_state, d_conv, expand: ToM's Mamba sizes (SegMamba's: 16, 4, 2).
        norm_op, norm_op_kwargs: norm of the residual blocks and heads (GroupNorm; without
            ``num_groups`` in the kwargs it gets min(8, widths[0]) groups, SegResNet's 8).
        nonlin, nonlin_kwargs: activation (ReLU, in place).
        conv_init: ``"pytorch"`` (PyTorch's default, as SegResNet's code keeps it) or ``"he"``
            (nnU-Net's He init, a=1e-2). The residual stream between the blocks is never normalised,
            and the stem, the stride-2 convs and the decoder's 1x1x1 convs act on it directly: He
            init doubles its variance at each of them, so at initialisation the up-sampled path
            outweighs the skip it is added to several times over and the fine-resolution detail
            is drowned; with PyTorch's init the two start at the same scale.
        deep_supervision: return the list of outputs.
    """

    def __init__(self, input_channels: int, num_classes: int,
                 strides: Sequence[Sequence[int]] = ((2, 2, 2), (2, 2, 2), (2, 2, 2)),
                 widths: Sequence[int] = (16, 32, 64, 128), depths: Sequence[int] = (1, 2, 2, 4),
                 decoder_depths: Sequence[int] = (1, 1, 1), mamba_levels: Sequence[int] = (1, 2, 3),
                 upsample_mode: str = "nontrainable", d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 norm_op: Type[nn.Module] = nn.GroupNorm, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] = nn.ReLU, nonlin_kwargs: dict | None = None,
                 conv_init: str = "pytorch", deep_supervision: bool = True):
        super().__init__(deep_supervision)
        n = len(widths)
        strides = tuple(tuple(int(v) for v in s) for s in strides)
        if n < 2:
            raise ValueError(f"SegResMamba: widths needs at least 2 levels, got {list(widths)}")
        check_lengths("SegResMamba", widths, depths=(depths, n), strides=(strides, n - 1),
                      decoder_depths=(decoder_depths, n - 1))
        if any(len(s) != 3 for s in strides):
            raise ValueError(f"SegResMamba: each stride needs 3 entries (z, y, x), got {[list(s) for s in strides]}")
        if any(b < 1 for b in (*depths, *decoder_depths)):
            raise ValueError(f"SegResMamba: every level needs at least one block, got depths "
                             f"{list(depths)}, decoder_depths {list(decoder_depths)}")
        if any(not 0 <= int(i) < n for i in mamba_levels):
            raise ValueError(f"SegResMamba: mamba_levels must be encoder levels in 0..{n - 1}, "
                             f"got {list(mamba_levels)}")
        if upsample_mode not in ("nontrainable", "deconv"):
            raise ValueError(f"SegResMamba: upsample_mode must be 'nontrainable' or 'deconv', got '{upsample_mode}'")
        groups = (norm_op_kwargs or {}).get("num_groups", min(8, widths[0])) if norm_op is nn.GroupNorm else 1
        if any(w % groups for w in widths):
            raise ValueError(f"SegResMamba: every width {list(widths)} must be divisible by GroupNorm's "
                             f"num_groups ({groups})")

        conv_kwargs = dict(norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                           nonlin_kwargs={"inplace": True} if nonlin_kwargs is None else nonlin_kwargs, bias=False)
        mamba_kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand)
        self.encoder = SegResMambaEncoder(input_channels, widths, strides, depths, mamba_levels, conv_kwargs,
                                          mamba_kwargs)
        self.decoder = SegResMambaDecoder(self.encoder, num_classes, decoder_depths, upsample_mode, conv_kwargs)
        self.deep_supervision_scales = scales_from_strides(self.decoder.output_strides)
        self.initialize_convolutions(conv_init)  # ToM's Linears and SSM parameters keep their own
