"""Convolution blocks shared by all networks (ops passed as classes, as in dynamic-network-architectures).

Shapes: every block maps (B, C_in, Z, Y, X) -> (B, C_out, Z', Y', X') with Z' = ceil(Z / stride_z)
(padding keeps 'same' size at stride 1).
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn

IntOr3 = Union[int, Sequence[int]]


def _triple(v: IntOr3) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)


def same_padding(kernel_size: IntOr3, dilation: IntOr3 = 1) -> tuple[int, int, int]:
    """Padding that keeps the size at stride 1 for odd kernels."""
    return tuple((k - 1) * d // 2 for k, d in zip(_triple(kernel_size), _triple(dilation)))


def make_norm(norm_op: Type[nn.Module] | None, channels: int, norm_op_kwargs: dict | None = None) -> nn.Module:
    """Instantiate ``norm_op`` for ``channels`` (``nn.GroupNorm`` gets ``num_groups`` from kwargs, default 8)."""
    if norm_op is None:
        return nn.Identity()
    kwargs = dict(norm_op_kwargs or {})
    if norm_op is nn.GroupNorm:
        return nn.GroupNorm(kwargs.pop("num_groups", min(8, channels)), channels, **kwargs)
    if norm_op in (nn.InstanceNorm3d, nn.InstanceNorm2d, nn.InstanceNorm1d):
        kwargs.setdefault("affine", True)
    return norm_op(channels, **kwargs)


def make_nonlin(nonlin: Type[nn.Module] | None, nonlin_kwargs: dict | None = None) -> nn.Module:
    return nn.Identity() if nonlin is None else nonlin(**(nonlin_kwargs or {}))


class ConvNormAct(nn.Module):
    """conv -> norm -> nonlin, or norm -> nonlin -> conv with ``pre_norm=True`` (pre-activation).

    (B, C_in, Z, Y, X) -> (B, C_out, ceil(Z/sz), ceil(Y/sy), ceil(X/sx)).
    """

    def __init__(self, input_channels: int, output_channels: int, kernel_size: IntOr3 = 3, stride: IntOr3 = 1,
                 dilation: IntOr3 = 1, conv_op: Type[nn.Module] = nn.Conv3d,
                 norm_op: Type[nn.Module] | None = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = nn.LeakyReLU, nonlin_kwargs: dict | None = None,
                 bias: bool = True, pre_norm: bool = False, padding: IntOr3 | None = None):
        super().__init__()
        pad = same_padding(kernel_size, dilation) if padding is None else _triple(padding)
        self.conv = conv_op(input_channels, output_channels, _triple(kernel_size), _triple(stride), pad,
                            dilation=_triple(dilation), bias=bias)
        self.pre_norm = pre_norm
        self.norm = make_norm(norm_op, input_channels if pre_norm else output_channels, norm_op_kwargs)
        self.nonlin = make_nonlin(nonlin, nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return self.conv(self.nonlin(self.norm(x)))
        return self.nonlin(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """Two conv blocks plus identity; a 1x1x1 conv (+norm) projects the identity when channels or
    stride change.

    ``pre_norm=False`` (UNETR++/MONAI ``UnetResBlock`` style): conv-norm-act, conv-norm, add, act.
    ``pre_norm=True`` (SegResNet style): norm-act-conv, norm-act-conv, add.
    (B, C_in, Z, Y, X) -> (B, C_out, ceil(Z/s), ceil(Y/s), ceil(X/s)).
    """

    def __init__(self, input_channels: int, output_channels: int, kernel_size: IntOr3 = 3, stride: IntOr3 = 1,
                 conv_op: Type[nn.Module] = nn.Conv3d, norm_op: Type[nn.Module] | None = nn.InstanceNorm3d,
                 norm_op_kwargs: dict | None = None, nonlin: Type[nn.Module] | None = nn.LeakyReLU,
                 nonlin_kwargs: dict | None = None, bias: bool = False, pre_norm: bool = False):
        super().__init__()
        norm = dict(norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, conv_op=conv_op, bias=bias, pre_norm=pre_norm)
        act = dict(nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)
        self.pre_norm = pre_norm
        self.conv1 = ConvNormAct(input_channels, output_channels, kernel_size, stride, **norm, **act)
        # post-norm: the second conv has no activation before the addition
        self.conv2 = ConvNormAct(output_channels, output_channels, kernel_size, 1, **norm,
                                 **(act if pre_norm else dict(nonlin=None)))
        self.skip: nn.Module = nn.Identity()
        if input_channels != output_channels or any(s != 1 for s in _triple(stride)):
            self.skip = ConvNormAct(input_channels, output_channels, 1, stride, conv_op=conv_op, bias=bias,
                                    norm_op=None if pre_norm else norm_op, norm_op_kwargs=norm_op_kwargs,
                                    nonlin=None)
        self.out_act = nn.Identity() if pre_norm else make_nonlin(nonlin, nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.conv2(self.conv1(x)) + self.skip(x))


class UpsampleBlock(nn.Module):
    """Transposed conv with kernel = stride: (B, C_in, Z, Y, X) -> (B, C_out, Z*sz, Y*sy, X*sx)."""

    def __init__(self, input_channels: int, output_channels: int, stride: IntOr3 = 2,
                 transp_op: Type[nn.Module] = nn.ConvTranspose3d, bias: bool = False):
        super().__init__()
        s = _triple(stride)
        self.up = transp_op(input_channels, output_channels, s, s, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SegmentationHeads(nn.Module):
    """1x1x1 conv heads on decoder features, highest resolution first.

    ``forward(features, deep_supervision)``: features is a list of (B, C_i, ...) highest
    resolution first; returns the list of (B, K, ...) logits, or only the first when
    ``deep_supervision`` is False (the other heads are then not run).

    With ``norm_op`` or ``nonlin`` given, each head is norm -> nonlin -> conv1x1x1 (a
    :class:`ConvNormAct` with ``pre_norm=True``; SegResNet's final block for pre-activation
    decoders); otherwise a plain conv.

    The module list is named ``seg_layers`` as in dynamic-network-architectures: nnU-Net's
    fine-tuning (``-pretrained_weights``) transfers every weight except keys containing
    ``.seg_layers.``, so a model can be fine-tuned to a different number of classes.
    """

    def __init__(self, channels: Sequence[int], num_classes: int, conv_op: Type[nn.Module] = nn.Conv3d,
                 norm_op: Type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = None, nonlin_kwargs: dict | None = None):
        super().__init__()
        if norm_op is None and nonlin is None:
            self.seg_layers = nn.ModuleList(conv_op(c, num_classes, 1, 1, 0, bias=True) for c in channels)
        else:
            self.seg_layers = nn.ModuleList(
                ConvNormAct(c, num_classes, 1, conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs,
                            nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, bias=True, pre_norm=True)
                for c in channels)

    def forward(self, features: Sequence[torch.Tensor], deep_supervision: bool):
        if not deep_supervision:
            return self.seg_layers[0](features[0])
        return [h(f) for h, f in zip(self.seg_layers, features)]
