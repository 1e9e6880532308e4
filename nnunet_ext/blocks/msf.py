"""MISSU's local multi-scale fusion (MSF): per-level block and the bottom-up pyramid.

Wang et al., "MISSU: 3D Medical Image Segmentation via Self-distilling TransUNet", IEEE TMI 2023
(multi-scale fusion block). MSF refines the encoder's local features F_i only for the self-distillation
loss; it runs in training and is skipped at inference.

- :class:`MSFBlock`: (B, C, Z, Y, X) -> (B, C, Z, Y, X); M = F + sum of four branches whose
  receptive fields are 3, 7, 9 and 19 voxels per axis:
  (1) atrous conv3 rate 1; (2) atrous conv3 rate 3, then a 1x1x1 conv; (3) rates 1, 3, then 1x1x1;
  (4) rates 1, 3, 5, then 1x1x1. (A stack of 3-kernels with rates r_k has RF 1 + 2 * sum(r_k).)
- :class:`MSFPyramid`: bottom-up across levels; O_1 = M_1, O_i = M_i + Down_i(O_{i-1}) with Down_i a
  3x3x3 conv of the level's stride (possibly anisotropic) mapping C_{i-1} -> C_i channels.
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from nnunet_ext.blocks.conv import ConvNormAct, make_nonlin
from nnunet_ext.ops.atrous import AtrousConv3d

#: MISSU's four branches (paper, MSF block): atrous rates of the stacked 3x3x3 convs (RF 3, 7, 9, 19)
MSF_BRANCH_RATES: tuple[tuple[int, ...], ...] = ((1,), (3,), (1, 3), (1, 3, 5))
#: whether a branch ends with a 1x1x1 conv (paper: the "regular conv" after the atrous ones)
MSF_BRANCH_POINTWISE: tuple[bool, ...] = (False, True, True, True)


class MSFBlock(nn.Module):
    """M = F + sum_b branch_b(F): (B, C, Z, Y, X) -> (B, C, Z, Y, X), sizes kept ('same' padding).

    The branches form a cascade (each is the previous one plus one more atrous conv), as in CE-Net's
    dense atrous convolution block (Gu et al., IEEE TMI 2019), which has the same RFs 3/7/9/19 and
    which we follow: there is one 3x3x3 kernel per atrous rate and one shared 1x1x1 conv, and a branch
    is its rates' convs applied in order, then (optionally) the 1x1x1 conv, then ``nonlin``. Shared
    prefixes are computed once (4 conv3 instead of 7 for the paper's branches). Nonlinearity only at
    the end of each branch, as in DAC. (Our reading where the paper is silent on sharing; MSF runs in
    training only, so it changes neither inference parameters nor MACs.)

    Args:
        channels: C.
        branch_rates: per branch, the dilation rates of its 3x3x3 convs (paper: RF 3/7/9/19).
        branch_pointwise: per branch, whether the 1x1x1 conv follows.
        conv_op: class of the 1x1x1 conv.
        atrous_op: class of the atrous convs (an ``nn.Conv3d`` that is fast on CPU; same parameters).
        norm_op: norm after each atrous conv (None: as in DAC).
        nonlin: activation at the end of each branch (None for identity, e.g. receptive-field tests).
    """

    def __init__(self, channels: int, branch_rates: Sequence[Sequence[int]] = MSF_BRANCH_RATES,
                 branch_pointwise: Sequence[bool] = MSF_BRANCH_POINTWISE, conv_op: Type[nn.Module] = nn.Conv3d,
                 atrous_op: Type[nn.Module] = AtrousConv3d, norm_op: Type[nn.Module] | None = None,
                 norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.ReLU, nonlin_kwargs: dict | None = None, bias: bool = True):
        super().__init__()
        if len(branch_rates) != len(branch_pointwise) or not branch_rates:
            raise ValueError(f"MSFBlock: branch_rates and branch_pointwise need one entry per branch (at least one), "
                             f"got {len(branch_rates)} and {len(branch_pointwise)}")
        if any(not rates or min(rates) < 1 for rates in branch_rates):
            raise ValueError(f"MSFBlock: every branch needs at least one dilation rate >= 1, got "
                             f"{[list(r) for r in branch_rates]}")
        self.branch_rates = tuple(tuple(int(r) for r in rates) for rates in branch_rates)
        self.branch_pointwise = tuple(bool(p) for p in branch_pointwise)
        rates = sorted({r for branch in self.branch_rates for r in branch})
        self.atrous = nn.ModuleDict({str(r): ConvNormAct(channels, channels, 3, 1, r, conv_op=atrous_op,
                                                         norm_op=norm_op, norm_op_kwargs=norm_op_kwargs,
                                                         nonlin=None, bias=bias)
                                     for r in rates})
        self.pointwise = conv_op(channels, channels, 1, 1, 0, bias=bias) if any(self.branch_pointwise) else None
        self.nonlin = make_nonlin(nonlin, nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacks: dict[tuple[int, ...], torch.Tensor] = {(): x}  # rate prefix -> its conv stack applied to x
        out = x
        for rates, pointwise in zip(self.branch_rates, self.branch_pointwise):
            for k in range(1, len(rates) + 1):
                if rates[:k] not in stacks:
                    stacks[rates[:k]] = self.atrous[str(rates[k - 1])](stacks[rates[:k - 1]])
            y = stacks[rates]
            out = out + self.nonlin(self.pointwise(y) if pointwise else y)
        return out


class MSFPyramid(nn.Module):
    """Bottom-up MSF pyramid over L levels (MISSU: the three shallower encoder levels).

    ``forward([F_1, ..., F_L])`` with F_i of shape (B, C_i, S_i) and S_i = S_{i-1} / strides[i-2]
    returns [O_1, ..., O_L] with O_i of F_i's shape: O_1 = MSF_1(F_1), O_i = MSF_i(F_i) + Down_i(O_{i-1}).

    Args:
        channels: (C_1, ..., C_L).
        strides: L - 1 strides (sz, sy, sx) between consecutive levels (from the plan).
        block_kwargs: passed to every :class:`MSFBlock`.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[Sequence[int]],
                 conv_op: Type[nn.Module] = nn.Conv3d, **block_kwargs):
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError(f"MSFPyramid: strides must have {len(channels) - 1} entries, one per level transition "
                             f"of channels {list(channels)}, got {len(strides)}")
        self.blocks = nn.ModuleList(MSFBlock(c, conv_op=conv_op, **block_kwargs) for c in channels)
        # our choice: a plain conv (with bias, no norm/activation) matches channels and size, as the
        # paper writes O_i = M_i + conv(O_{i-1}) without naming a norm
        self.downs = nn.ModuleList(ConvNormAct(c_in, c_out, 3, tuple(s), conv_op=conv_op, norm_op=None, nonlin=None)
                                   for c_in, c_out, s in zip(channels[:-1], channels[1:], strides))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.blocks):
            raise ValueError(f"MSFPyramid: features must have {len(self.blocks)} feature maps, got {len(features)}")
        out = [self.blocks[0](features[0])]
        for block, down, f in zip(self.blocks[1:], self.downs, features[1:]):
            out.append(block(f) + down(out[-1]))
        return out
