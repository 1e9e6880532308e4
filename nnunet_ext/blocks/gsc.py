"""SegMamba's gated spatial convolution (GSC) and the TSMamba block (Xing et al., "SegMamba:
Long-range Sequential Modeling Mamba for 3D Medical Image Segmentation", MICCAI 2024).

Shapes: every block maps (B, C, Z, Y, X) -> (B, C, Z, Y, X).
"""

from __future__ import annotations

from typing import Type

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.blocks.conv import ConvNormAct
from nnunet_ext.blocks.mamba import MambaLayer


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, Z, Y, X) map (each voxel normalised on its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias,
                            self.eps).movedim(-1, 1)


class GatedSpatialConv(nn.Module):
    """GSC: a = C3(z), b = C1(z), out = C1(gate(a, b)) + z, with C3 / C1 conv -> norm -> nonlin
    blocks of kernel 3^3 / 1^3 (SegMamba, "GSC"). (B, C, Z, Y, X) -> (B, C, Z, Y, X).

    Args:
        channels: C.
        spatial_convs: number of stacked 3^3 conv blocks in branch a (the public code stacks two,
            which its 67.42 M parameters count; default 2).
        gate: ``"product"`` a * b (the paper's gate, default) or ``"sum"`` a + b (the public code).
        conv_op, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: ops as classes (the public code
            uses InstanceNorm3d and ReLU).
    """

    def __init__(self, channels: int, spatial_convs: int = 2, gate: str = "product",
                 conv_op: Type[nn.Module] = nn.Conv3d, norm_op: Type[nn.Module] | None = nn.InstanceNorm3d,
                 norm_op_kwargs: dict | None = None, nonlin: Type[nn.Module] | None = nn.ReLU,
                 nonlin_kwargs: dict | None = None):
        super().__init__()
        if gate not in ("product", "sum"):
            raise ValueError(f"GatedSpatialConv: gate must be 'product' or 'sum', got {gate!r}")
        if spatial_convs < 1:
            raise ValueError(f"GatedSpatialConv: spatial_convs must be >= 1, got {spatial_convs}")
        self.gate = gate
        ops = dict(conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                   nonlin_kwargs=nonlin_kwargs, bias=True)
        self.spatial = nn.Sequential(*[ConvNormAct(channels, channels, 3, **ops) for _ in range(spatial_convs)])
        self.pointwise = ConvNormAct(channels, channels, 1, **ops)
        self.fuse = ConvNormAct(channels, channels, 1, **ops)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self.spatial(z), self.pointwise(z)
        g = a * b if self.gate == "product" else a + b
        return self.fuse(g) + z


class ChannelMLP(nn.Module):
    """1^3 conv C -> hidden, GELU, 1^3 conv hidden -> C: (B, C, Z, Y, X) -> (B, C, Z, Y, X)."""

    def __init__(self, channels: int, hidden: int, conv_op: Type[nn.Module] = nn.Conv3d):
        super().__init__()
        self.fc1 = conv_op(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = conv_op(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TSMambaBlock(nn.Module):
    """TSMamba block (SegMamba, "TSMamba"): z <- GSC(z); ``depth`` times z <- z + ToM(LN(z));
    then z <- z + MLP(LN(z)). (B, C, Z, Y, X) -> (B, C, Z, Y, X).

    As in the public code there is one GSC and one MLP per block (= per encoder stage) around
    ``depth`` Mamba layers. The public code feeds MLP(InstanceNorm(z)) only to the decoder and
    continues the encoder from z; we follow the paper: the MLP is a residual step of the block and
    its output feeds both (same parameters).

    Args:
        channels: C.
        depth: number of :class:`~nnunet_ext.blocks.mamba.MambaLayer` (paper: 2 per stage).
        mlp_ratio: MLP hidden width / C (paper: 2).
        d_state, d_conv, expand: Mamba sizes (16, 4, 2).
        gsc_kwargs: passed to :class:`GatedSpatialConv` (ops, ``gate``, ``spatial_convs``).
    """

    def __init__(self, channels: int, depth: int = 2, mlp_ratio: int = 2, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, conv_op: Type[nn.Module] = nn.Conv3d, gsc_kwargs: dict | None = None):
        super().__init__()
        self.gsc = GatedSpatialConv(channels, conv_op=conv_op, **(gsc_kwargs or {}))
        self.mamba = nn.Sequential(*[MambaLayer(channels, d_state, d_conv, expand) for _ in range(depth)])
        self.mlp_norm = ChannelLayerNorm(channels)
        self.mlp = ChannelMLP(channels, mlp_ratio * channels, conv_op)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.mamba(self.gsc(z))
        return z + self.mlp(self.mlp_norm(z))


__all__ = ["ChannelLayerNorm", "ChannelMLP", "GatedSpatialConv", "TSMambaBlock"]
