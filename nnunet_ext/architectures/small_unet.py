"""A deliberately small plain U-Net built from the plans (nnU-Net's own topology, narrow widths).

It is the spine's proof network: cheap enough that the end-to-end tests train it through the
stock console scripts in seconds. It wraps dynamic-network-architectures' ``PlainConvUNet``
with the plan's strides and a quarter of nnU-Net's widths (capped at ``max_features``).
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, scales_from_strides
from nnunet_ext.architectures.plans import PlanSpec, cumulative_strides
from nnunet_ext.architectures.registry import register_architecture


class SmallUNet(ExtNetwork):
    """Plain conv U-Net: (B, C_in, Z, Y, X) -> (B, K, Z, Y, X) logits, or a list at every decoder scale.

    Args:
        input_channels: C_in.
        num_classes: K (segmentation heads).
        strides: one (sz, sy, sx) per stage (nnU-Net's ``pool_op_kernel_sizes``).
        features_per_stage: widths of the stages.
        deep_supervision: return one output per decoder scale, highest resolution first.
    """

    def __init__(self, input_channels: int, num_classes: int, strides, features_per_stage,
                 deep_supervision: bool = True, conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d,
                 nonlin=nn.LeakyReLU):
        super().__init__()
        n = len(strides)
        self.unet = PlainConvUNet(
            input_channels=input_channels, n_stages=n, features_per_stage=list(features_per_stage),
            conv_op=conv_op, kernel_sizes=[[3, 3, 3]] * n, strides=[list(s) for s in strides],
            n_conv_per_stage=[1] * n, num_classes=num_classes, n_conv_per_stage_decoder=[1] * (n - 1),
            conv_bias=True, norm_op=norm_op, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nonlin, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)
        # decoder outputs: one per stage except the bottleneck, highest resolution first
        self.deep_supervision_scales = scales_from_strides(cumulative_strides(strides)[:-1])
        self.key_to_encoder = "unet.encoder.stages"
        self.key_to_stem = "unet.encoder.stages.0"
        self.keys_to_in_proj = ("unet.encoder.stages.0.0.convs.0.conv",)
        self.apply(self.initialize)

    @property
    def deep_supervision(self) -> bool:
        return self.unet.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.unet.decoder.deep_supervision = value

    def forward(self, x: torch.Tensor):
        return self.unet(x)


@register_architecture("small_unet", trainer="SmallUNetTrainer", title="Small plain U-Net",
                       paper="nnU-Net's plain U-Net at a quarter width (Isensee et al., Nat. Methods 2021)")
def build_small_unet(spec: PlanSpec, input_channels: int, num_classes: int,
                     deep_supervision: bool = True, max_features: int = 64) -> SmallUNet:
    planned = spec.features_per_stage or tuple(32 * 2 ** i for i in range(len(spec.strides)))
    features = [min(max(f // 4, 8), max_features) for f in planned]
    return SmallUNet(input_channels, num_classes, spec.strides, features, deep_supervision)
