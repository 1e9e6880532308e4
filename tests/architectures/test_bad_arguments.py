"""Bad arguments of every network and block -> ValueError whose message names the argument and what
is expected (MONAI style: one table)."""

import pytest
import torch

from nnunet_ext.architectures.missu import MISSU, TransformerBottleneck
from nnunet_ext.architectures.segmamba import SegMamba
from nnunet_ext.architectures.segresmamba import SegResMamba
from nnunet_ext.architectures.small_unet import SmallUNet
from nnunet_ext.architectures.unetr_pp import UNETRPP
from nnunet_ext.blocks.distillation import self_distillation_loss
from nnunet_ext.blocks.epa import EfficientPairedAttention, EPABlock
from nnunet_ext.blocks.gsc import GatedSpatialConv
from nnunet_ext.blocks.msf import MSFBlock, MSFPyramid
from nnunet_ext.blocks.transformer import MultiHeadSelfAttention, TransformerEncoder

S2 = ((2, 2, 2),) * 2
S3 = ((2, 2, 2),) * 3

BAD = {
    # ---------------------------------------------------------------- networks
    "unetr_pp one stage": (lambda: UNETRPP(1, 2, widths=(32,)), r"widths needs at least 2 stages"),
    "unetr_pp strides": (lambda: UNETRPP(1, 2, widths=(32, 64, 128)), r"strides must have 3 entries for 3 stages"),
    "unetr_pp depths": (lambda: UNETRPP(1, 2, depths=(3, 3, 3)), r"depths must have 4 entries"),
    "unetr_pp proj_sizes": (lambda: UNETRPP(1, 2, proj_sizes=(64,)), r"proj_sizes must have 4 entries"),
    "unetr_pp decoder_depths": (lambda: UNETRPP(1, 2, decoder_depths=(3, 3)), r"decoder_depths must have 3 entries"),
    "unetr_pp 2d patch": (lambda: UNETRPP(1, 2, patch_size=(64, 64)), r"patch_size and each stride need 3 entries"),
    "unetr_pp patch": (lambda: UNETRPP(1, 2, patch_size=(30, 64, 64)),
                       r"patch_size \[30, 64, 64\] must be divisible by the total stride \[16, 32, 32\]"),
    "unetr_pp heads": (lambda: UNETRPP(1, 2, widths=(30, 64, 128, 256)), r"divisible by num_heads \(4\)"),
    "segmamba strides": (lambda: SegMamba(1, 2, strides=S3), r"SegMamba: strides must have 4 entries for 4 stages"),
    "segmamba depths": (lambda: SegMamba(1, 2, depths=(2, 2)), r"SegMamba: depths must have 4 entries"),
    "segresmamba one level": (lambda: SegResMamba(1, 2, widths=(16,), strides=(), depths=(1,), decoder_depths=()),
                              r"widths needs at least 2 levels"),
    "segresmamba strides": (lambda: SegResMamba(1, 2, strides=S2),
                            r"SegResMamba: strides must have 3 entries for 4 stages"),
    "segresmamba depths": (lambda: SegResMamba(1, 2, depths=(1, 2)), r"depths must have 4 entries"),
    "segresmamba decoder_depths": (lambda: SegResMamba(1, 2, decoder_depths=(1, 1)),
                                   r"decoder_depths must have 3 entries"),
    "segresmamba 2d stride": (lambda: SegResMamba(1, 2, strides=((2, 2),) * 3), r"each stride needs 3 entries"),
    "segresmamba empty level": (lambda: SegResMamba(1, 2, depths=(1, 0, 1, 1)), r"at least one block"),
    "segresmamba mamba_levels": (lambda: SegResMamba(1, 2, mamba_levels=(4,)), r"mamba_levels must be .* 0\.\.3"),
    "segresmamba upsample": (lambda: SegResMamba(1, 2, upsample_mode="nearest"), r"upsample_mode must be"),
    "segresmamba groups": (lambda: SegResMamba(1, 2, widths=(12, 24, 48, 96)), r"divisible by GroupNorm's num_groups"),
    "missu strides": (lambda: MISSU(1, 2, (16, 16, 16), strides=S2), r"MISSU: strides must have 3 entries"),
    "missu depths": (lambda: MISSU(1, 2, (16, 16, 16), depths=(1, 1)), r"MISSU: depths must have 4 entries"),
    "missu patch": (lambda: MISSU(1, 2, (12, 16, 16)), r"patch_size \[12, 16, 16\] must be divisible by the total"),
    "missu heads": (lambda: MISSU(1, 2, (16, 16, 16), num_heads=3),
                    r"embed_dim \(512\) must be divisible by num_heads"),
    "small_unet strides": (lambda: SmallUNet(1, 2, ((1, 1, 1),), (8, 16)), r"strides must have 2 entries for 2 stages"),
    # ---------------------------------------------------------------- blocks
    "epa heads": (lambda: EfficientPairedAttention(16, 10, 4), r"channels \(10\) must be divisible by num_heads \(4\)"),
    "epa tokens": (lambda: EfficientPairedAttention(0, 8, 4), r"num_tokens \(0\) and proj_size"),
    "epa proj_size": (lambda: EfficientPairedAttention(16, 8, 4, proj_size=0), r"proj_size \(0\) must be >= 1"),
    "epa fusion": (lambda: EfficientPairedAttention(16, 8, 4, fusion="mean"), r"fusion must be 'concat' or 'sum'"),
    "epa input": (lambda: EfficientPairedAttention(32, 8, 4, 8)(torch.randn(1, 31, 8)),
                  r"expected tokens \(B, 32, 8\)"),
    "epa block input": (lambda: EPABlock((2, 4, 4), 8, 4, 8)(torch.randn(1, 8, 2, 4, 8)), r"spatial size \[2, 4, 4\]"),
    "gsc gate": (lambda: GatedSpatialConv(8, gate="max"), r"gate must be 'product' or 'sum'"),
    "gsc spatial_convs": (lambda: GatedSpatialConv(8, spatial_convs=0), r"spatial_convs must be >= 1"),
    "msf branches": (lambda: MSFBlock(4, branch_rates=((1,), (3,)), branch_pointwise=(True,)),
                     r"branch_rates and branch_pointwise need one entry per branch"),
    "msf rates": (lambda: MSFBlock(4, branch_rates=((1,), ()), branch_pointwise=(True, True)),
                  r"every branch needs at least one dilation rate"),
    "msf pyramid strides": (lambda: MSFPyramid((2, 3, 4), S3), r"strides must have 2 entries"),
    "msf pyramid input": (lambda: MSFPyramid((2, 3), ((2, 2, 2),))([torch.zeros(1, 2, 4, 4, 4)]),
                          r"features must have 2 feature maps"),
    "attention heads": (lambda: MultiHeadSelfAttention(10, 4), r"dim \(10\) must be divisible by num_heads \(4\)"),
    "transformer tokens": (lambda: TransformerEncoder(8, 5, 1, 2, 8)(torch.zeros(1, 4, 8)), r"must have 5 tokens"),
    "bottleneck grid": (lambda: TransformerBottleneck(4, (2, 2, 2), 8, 1, 2, 8)(torch.zeros(1, 4, 2, 2, 3)),
                        r"x must have a \[2, 2, 2\] grid"),
    "distillation levels": (lambda: self_distillation_loss([torch.zeros(1, 2, 2, 2, 2)], []),
                            r"same number of levels"),
    "distillation sizes": (lambda: self_distillation_loss([torch.ones(1, 2, 2, 2, 2)], [torch.ones(1, 2, 1, 1, 1)]),
                           r"level 0: fused_features must have the batch and spatial size"),
}


@pytest.mark.parametrize("make, match", BAD.values(), ids=BAD.keys())
def test_bad_argument_raises_value_error_naming_it(make, match):
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        make()
