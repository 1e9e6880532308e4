"""The shared convolution blocks: shapes, and the residual blocks against their formulas."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.blocks.conv import ConvNormAct, ResidualBlock, SegmentationHeads, UpsampleBlock
from tests.weights import randomise


@pytest.mark.parametrize("kernel, stride, size, expected", [
    (3, 1, (5, 6, 7), (5, 6, 7)),  # 'same' padding at stride 1
    (3, (1, 2, 2), (5, 6, 7), (5, 3, 4)),  # ceil(size / stride)
    ((1, 7, 7), 2, (6, 9, 8), (3, 5, 4)),
    (1, 1, (2, 3, 4), (2, 3, 4)),
])
def test_conv_norm_act_shapes(kernel, stride, size, expected):
    out = ConvNormAct(2, 5, kernel, stride)(torch.randn(1, 2, *size))
    assert out.shape == (1, 5, *expected)


def test_upsample_inverts_the_stride():
    assert UpsampleBlock(4, 2, (1, 2, 3))(torch.randn(1, 4, 3, 3, 3)).shape == (1, 2, 3, 6, 9)


def test_pre_norm_residual_block_is_segresnets():
    """SegResNet (Myronenko 2018): x + conv3(ReLU(GN(conv3(ReLU(GN(x))))))."""
    block = ResidualBlock(8, 8, 3, norm_op=nn.GroupNorm, norm_op_kwargs={"num_groups": 4}, nonlin=nn.ReLU,
                          pre_norm=True)
    randomise(block)
    x = torch.randn(2, 8, 3, 4, 5)

    def unit(h, u):
        return F.conv3d(F.relu(F.group_norm(h, 4, u.norm.weight, u.norm.bias)), u.conv.weight, padding=1)

    with torch.no_grad():
        torch.testing.assert_close(block(x), x + unit(unit(x, block.conv1), block.conv2), rtol=1e-4, atol=1e-5)


def test_post_norm_residual_block_projects_the_identity():
    """MONAI's UnetResBlock: LReLU(IN(conv3(LReLU(IN(conv3(x))))) + IN(conv1(x))), 1x1x1 projection because
    the channels change."""
    block = ResidualBlock(3, 6, 3, pre_norm=False)
    randomise(block)
    x = torch.randn(2, 3, 4, 4, 5)

    def conv_in(h, u, pad):
        return F.instance_norm(F.conv3d(h, u.conv.weight, padding=pad), weight=u.norm.weight, bias=u.norm.bias)

    with torch.no_grad():
        h = F.leaky_relu(conv_in(x, block.conv1, 1), 0.01)
        expected = F.leaky_relu(conv_in(h, block.conv2, 1) + conv_in(x, block.skip, 0), 0.01)
        torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


def test_heads_run_only_the_first_without_deep_supervision():
    heads = SegmentationHeads([4, 8], 3)
    feats = [torch.randn(1, 4, 4, 4, 4), torch.randn(1, 8, 2, 2, 2)]
    full = heads(feats, True)
    assert [o.shape for o in full] == [(1, 3, 4, 4, 4), (1, 3, 2, 2, 2)]
    torch.testing.assert_close(heads(feats[:1], False), full[0])  # the deeper feature is not needed
