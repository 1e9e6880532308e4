"""Building blocks (EPA, GSC, ToM, MSF, conv/residual blocks), each module documented with shapes."""

from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock, make_nonlin, make_norm

__all__ = ["ConvNormAct", "ResidualBlock", "SegmentationHeads", "UpsampleBlock", "make_nonlin", "make_norm"]
