import pytest
import torch

from nnunet_ext.blocks.msf import MSF_BRANCH_RATES, MSFBlock, MSFPyramid, receptive_field


def _ones_block(channels: int = 1) -> MSFBlock:
    """MSF block with all kernels = 1, biases = 0 and no nonlinearity: a pure spreading operator."""
    block = MSFBlock(channels, nonlin=None)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    return block


def _extent(mask_1d: torch.Tensor) -> int:
    idx = torch.nonzero(mask_1d).flatten()
    return int(idx.max() - idx.min() + 1)


def test_paper_receptive_fields():
    assert [receptive_field(r) for r in MSF_BRANCH_RATES] == [3, 7, 9, 19]
    assert MSFBlock(4).receptive_fields == (3, 7, 9, 19)


def test_impulse_spreads_3_7_9_19_per_branch():
    n, c = 23, 11  # 23^3 volume, impulse at the centre: every RF fits
    x = torch.zeros(1, 1, n, n, n)
    x[0, 0, c, c, c] = 1.0
    branches = _ones_block().branch_outputs(x)
    assert len(branches) == 4
    for y, rf in zip(branches, (3, 7, 9, 19)):
        nz = y[0, 0] != 0
        for axis in range(3):
            # the spread along each axis (projection of the non-zero set) is the receptive field
            assert _extent(nz.any(dim=tuple(a for a in range(3) if a != axis))) == rf
    # hand-computed profiles along z through the centre (kernels of ones: count of offset paths)
    line = [b[0, 0, :, c, c] for b in branches]
    torch.testing.assert_close(line[0][c - 1:c + 2], torch.ones(3))
    expected_rate3 = torch.zeros(7)
    expected_rate3[[0, 3, 6]] = 1.0  # rate 3: taps at -3, 0, +3 only
    torch.testing.assert_close(line[1][c - 3:c + 4], expected_rate3)
    torch.testing.assert_close(line[2][c - 4:c + 5], torch.ones(9))  # {-1,0,1} + {-3,0,3}: all offsets once
    # {-1,0,1} + {-3,0,3} + {-5,0,5}: offset counts by hand
    expected_19 = torch.tensor([1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1], dtype=torch.float32)
    torch.testing.assert_close(line[3][c - 9:c + 10], expected_19)
    assert line[3][:c - 9].abs().sum() == 0 and line[3][c + 10:].abs().sum() == 0


def test_block_output_is_input_plus_branches():
    block = MSFBlock(3)
    x = torch.randn(2, 3, 6, 7, 5)
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x + sum(block.branch_outputs(x)))
    # the cascade shares one kernel per rate and one 1x1x1 conv: 3 * 3^3 * C^2 + C^2 weights + 4 * C biases
    assert sum(p.numel() for p in block.parameters()) == 3 * 27 * 9 + 9 + 4 * 3


@pytest.mark.parametrize("strides, sizes", [
    (((2, 2, 2), (2, 2, 2)), [(8, 8, 8), (4, 4, 4), (2, 2, 2)]),
    (((1, 2, 2), (2, 2, 2)), [(4, 8, 12), (4, 4, 6), (2, 2, 3)]),  # anisotropic plan strides
])
def test_pyramid_bottom_up(strides, sizes):
    channels = (2, 3, 4)
    pyr = MSFPyramid(channels, strides)
    feats = [torch.randn(2, c, *s) for c, s in zip(channels, sizes)]
    out = pyr(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    torch.testing.assert_close(out[0], pyr.blocks[0](feats[0]))
    for i in (1, 2):
        torch.testing.assert_close(out[i], pyr.blocks[i](feats[i]) + pyr.downs[i - 1](out[i - 1]))
    assert [d.conv.stride for d in pyr.downs] == [tuple(s) for s in strides]
