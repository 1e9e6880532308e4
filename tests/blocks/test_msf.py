"""MISSU's MSF: receptive fields measured, the block and the pyramid against their formulas."""

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.blocks.msf import MSF_BRANCH_POINTWISE, MSF_BRANCH_RATES, MSFBlock, MSFPyramid

#: MISSU paper (MSF block): receptive fields of the four branches, voxels per axis
PAPER_RFS = (3, 7, 9, 19)


def _support_extent(block: MSFBlock, channels: int = 2, n: int = 25) -> tuple[int, ...]:
    """Per axis, how many input voxels one output voxel (the centre) depends on: the extent of the
    non-zero input gradient."""
    x = torch.randn(1, channels, n, n, n, requires_grad=True)
    block(x)[0, :, n // 2, n // 2, n // 2].sum().backward()
    nz = x.grad[0].abs().sum(0) > 0
    extents = []
    for axis in range(3):
        idx = torch.nonzero(nz.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        extents.append(int(idx.max() - idx.min() + 1))
    return tuple(extents)


@pytest.mark.parametrize("rates, pointwise, rf", list(zip(MSF_BRANCH_RATES, MSF_BRANCH_POINTWISE, PAPER_RFS)))
def test_each_branch_has_the_papers_receptive_field(rates, pointwise, rf):
    block = MSFBlock(2, branch_rates=(rates,), branch_pointwise=(pointwise,), nonlin=None)
    assert _support_extent(block) == (rf, rf, rf)


def test_the_paper_block_sees_19_voxels():
    assert _support_extent(MSFBlock(2, nonlin=None)) == (max(PAPER_RFS),) * 3


def test_rate_1_3_5_stack_profile_counts_offset_paths():
    """All-ones kernels, no bias, one channel: the (1, 3, 5) branch spreads an impulse along z with
    weight = number of ways to write the offset as a + b + c, a in {-1,0,1}, b in {-3,0,3}, c in
    {-5,0,5} (times the single in-plane path (0, 0, 0))."""
    block = MSFBlock(1, branch_rates=((1, 3, 5),), branch_pointwise=(True,), nonlin=None)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    n, c = 23, 11
    x = torch.zeros(1, 1, n, n, n)
    x[0, 0, c, c, c] = 1.0
    branch = (block(x) - x)[0, 0, :, c, c]  # M = F + branch
    offsets = [a + b + d for a in (-1, 0, 1) for b in (-3, 0, 3) for d in (-5, 0, 5)]
    expected = torch.tensor([float(offsets.count(o - c)) for o in range(n)])
    torch.testing.assert_close(branch, expected)


def test_block_is_input_plus_the_four_cascaded_branches():
    """M = F + sum of the branches, written with F.conv3d from the block's kernels: one 3^3 kernel per
    rate and one 1x1x1 conv shared by the branches (CE-Net's dense atrous cascade), ReLU at each end."""
    c = 3
    block = MSFBlock(c)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, c, 6, 7, 5)

    def atrous(h, r):
        conv = block.atrous[str(r)].conv
        return F.conv3d(h, conv.weight, conv.bias, padding=r, dilation=r)

    def pw(h):
        return F.conv3d(h, block.pointwise.weight, block.pointwise.bias)

    r1 = atrous(x, 1)
    r13 = atrous(r1, 3)
    branches = [r1, pw(atrous(x, 3)), pw(r13), pw(atrous(r13, 5))]
    torch.testing.assert_close(block(x), x + sum(F.relu(b) for b in branches), rtol=1e-4, atol=1e-5)
    # the cascade shares one kernel per rate and one 1x1x1 conv: 3 x 27 C^2 + C^2 weights, 4 C biases
    assert sum(p.numel() for p in block.parameters()) == 3 * 27 * c * c + c * c + 4 * c


@pytest.mark.parametrize("strides, sizes", [
    (((2, 2, 2), (2, 2, 2)), [(8, 8, 8), (4, 4, 4), (2, 2, 2)]),
    (((1, 2, 2), (2, 2, 2)), [(4, 8, 12), (4, 4, 6), (2, 2, 3)]),  # anisotropic plan strides
])
def test_pyramid_is_bottom_up(strides, sizes):
    """O_1 = M_1, O_i = M_i + Down_i(O_{i-1}): with every branch zeroed (M = F) it is written out with
    F.conv3d; with random branches O_i depends on F_1..F_i and on no deeper level."""
    channels = (2, 3, 4)
    pyr = MSFPyramid(channels, strides)
    feats = [torch.randn(2, c, *s, requires_grad=True) for c, s in zip(channels, sizes)]
    out = pyr(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    for i, o in enumerate(out):
        grads = torch.autograd.grad(o.sum(), feats, allow_unused=True, retain_graph=True)
        reached = [g is not None and bool(g.abs().sum() > 0) for g in grads]
        assert reached == [j <= i for j in range(3)], (i, reached)

    with torch.no_grad():
        for block in pyr.blocks:
            for p in block.parameters():
                p.zero_()
        expected = [feats[0]]
        for f, down, s in zip(feats[1:], pyr.downs, strides):
            expected.append(f + F.conv3d(expected[-1], down.conv.weight, down.conv.bias, stride=s, padding=1))
        for o, e in zip(pyr(feats), expected):
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)
