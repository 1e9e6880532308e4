"""GSC and the TSMamba block (issue 5, blocks part)."""

import pytest
import torch
from torch import nn

from nnunet_ext.blocks.gsc import ChannelLayerNorm, GatedSpatialConv, TSMambaBlock
from nnunet_ext.blocks.mamba import MambaLayer


def _assert_all_grads(module: nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("shape", [(4, 4, 4), (3, 5, 7)])
def test_gsc_shape_and_gradients(shape):
    gsc = GatedSpatialConv(8)
    x = torch.randn(2, 8, *shape, requires_grad=True)
    out = gsc(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    _assert_all_grads(gsc)


@pytest.mark.parametrize("gate", ["product", "sum"])
def test_gsc_computes_its_gate(gate):
    gsc = GatedSpatialConv(6, gate=gate)
    z = torch.randn(1, 6, 4, 5, 3)
    a, b = gsc.spatial(z), gsc.pointwise(z)
    g = a * b if gate == "product" else a + b
    torch.testing.assert_close(gsc(z), gsc.fuse(g) + z)


def test_gsc_structure_follows_public_code_counts():
    """Branch a: two 3^3 conv blocks by default; b and fusion: 1^3 conv blocks."""
    gsc = GatedSpatialConv(8)
    kernels = [blk.conv.kernel_size for blk in gsc.spatial] + [gsc.pointwise.conv.kernel_size, gsc.fuse.conv.kernel_size]
    assert kernels == [(3, 3, 3), (3, 3, 3), (1, 1, 1), (1, 1, 1)]
    assert len(GatedSpatialConv(8, spatial_convs=1).spatial) == 1


@pytest.mark.parametrize("kwargs, error", [({"gate": "max"}, "gate"), ({"spatial_convs": 0}, "spatial_convs")])
def test_gsc_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        GatedSpatialConv(8, **kwargs)


def test_channel_layer_norm_normalises_each_voxel_over_channels():
    ln = ChannelLayerNorm(5)
    x = torch.randn(2, 5, 3, 4, 2) * 3 + 1
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 4, 1), (5,)).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(ln(x), ref)


@pytest.mark.parametrize("depth", [1, 2])
def test_tsmamba_block_shape_and_gradients(depth):
    block = TSMambaBlock(8, depth=depth, d_state=4)
    assert sum(isinstance(m, MambaLayer) for m in block.mamba) == depth
    assert block.mlp.fc1.out_channels == 16 and block.mlp.fc2.out_channels == 8
    x = torch.randn(1, 8, 3, 5, 7, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    _assert_all_grads(block)


def test_tsmamba_block_order():
    """z <- GSC(z); z <- MambaLayers(z); z <- z + MLP(LN(z))."""
    block = TSMambaBlock(8, depth=2, d_state=4)
    x = torch.randn(1, 8, 2, 3, 4)
    z = block.mamba(block.gsc(x))
    torch.testing.assert_close(block(x), z + block.mlp(block.mlp_norm(z)))


def test_tsmamba_bf16_autocast_50_steps_without_nan():
    torch.manual_seed(0)
    block = TSMambaBlock(8, depth=1, d_state=4)
    opt = torch.optim.SGD(block.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    for step in range(50):
        x = torch.randn(2, 8, 3, 4, 5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
            loss = (out.float() - x).square().mean()
        assert torch.isfinite(loss), f"loss not finite at step {step}"
        opt.zero_grad()
        loss.backward()
        for n, p in block.named_parameters():
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {n} at step {step}"
        torch.nn.utils.clip_grad_norm_(block.parameters(), 12)  # as nnU-Net
        opt.step()
