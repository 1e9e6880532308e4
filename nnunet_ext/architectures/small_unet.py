"""A deliberately small plain U-Net built from the plans (nnU-Net's own topology, narrow widths).

It is the spine's proof network: cheap enough that the end-to-end tests train it through the
stock console scripts in seconds. It wraps dynamic-network-architectures' ``PlainConvUNet``
with the plan's strides and a quarter of nnU-Net's widths (between 8 and 64: fast on CPU).
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ext.architectures.base import ExtNetwork, check_lengths, scales_from_strides
from nnunet_ext.architectures.plans import PlanSpec, Strides, cumulative_strides, plan_strides
from nnunet_ext.architectures.registry import register_architecture


class SmallUNet(ExtNetwork):
    """Plain conv U-Net: (B, C_in, Z, Y, X) -> (B, K, Z, Y, X) logits, or a list at every decoder scale.

    Args:
        input_channels: C_in.
        num_classes: K (segmentation heads).
        strides: one (sz, sy, sx) per stage (nnU-Net's ``pool_op_kernel_sizes``).
        widths: channels of the stages.
        deep_supervision: return one output per decoder scale, highest resolution first.
    """

    def __init__(self, input_channels: int, num_classes: int, strides, widths, deep_supervision: bool = True,
                 conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU):
        super().__init__(deep_supervision, key_to_encoder="unet.encoder.stages", key_to_stem="unet.encoder.stages.0",
                         keys_to_in_proj=("unet.encoder.stages.0.0.convs.0.conv",))
        n = len(widths)
        check_lengths("SmallUNet", widths, strides=(strides, n))
        # the U-Net always computes every head (1x1x1 convs, a negligible cost); forward picks
        # what ``deep_supervision`` asks for
        self.unet = PlainConvUNet(
            input_channels=input_channels, n_stages=n, features_per_stage=list(widths),
            conv_op=conv_op, kernel_sizes=[[3, 3, 3]] * n, strides=[list(s) for s in strides],
            n_conv_per_stage=[1] * n, num_classes=num_classes, n_conv_per_stage_decoder=[1] * (n - 1),
            conv_bias=True, norm_op=norm_op, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nonlin, nonlin_kwargs={"inplace": True}, deep_supervision=True)
        # decoder outputs: one per stage except the bottleneck, highest resolution first
        self.deep_supervision_scales = scales_from_strides(cumulative_strides(strides)[:-1])
        self.apply(self.initialize)

    def forward(self, x: torch.Tensor):
        outputs = self.unet(x)
        return outputs if self.deep_supervision else outputs[0]


@register_architecture("small_unet", trainer="SmallUNetTrainer", title="Small plain U-Net",
                       paper="nnU-Net's plain U-Net at a quarter width (Isensee et al., Nat. Methods 2021)",
                       downsamplings=None, stride_rule=plan_strides, paper_network=False)
def build_small_unet(spec: PlanSpec, strides: Strides, input_channels: int, num_classes: int,
                     deep_supervision: bool, **network_kwargs) -> SmallUNet:
    planned = spec.features_per_stage or tuple(32 * 2 ** i for i in range(len(strides)))
    widths = [min(max(f // 4, 8), 64) for f in planned]
    return SmallUNet(input_channels, num_classes, strides, widths, deep_supervision, **network_kwargs)
