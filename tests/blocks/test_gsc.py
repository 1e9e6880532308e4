"""SegMamba's GSC and TSMamba block against their formulas (plain torch ops, the modules' weights)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.blocks.gsc import ChannelLayerNorm, GatedSpatialConv, TSMambaBlock
from nnunet_ext.blocks.mamba import MambaLayer
from tests.weights import randomise


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


def _conv_norm_relu(h, unit):
    """conv -> InstanceNorm (affine) -> ReLU with the unit's weights ('same' padding)."""
    conv, norm = unit.conv, unit.norm
    h = F.conv3d(h, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2)
    return F.relu(F.instance_norm(h, weight=norm.weight, bias=norm.bias, eps=norm.eps))


def _reference_gsc(gsc: GatedSpatialConv, z: torch.Tensor, gate: str) -> torch.Tensor:
    """SegMamba's GSC: a = C3(C3(z)), b = C1(z), out = C1(a * b) + z (paper; the public code sums a + b)."""
    a = z
    for unit in gsc.spatial:
        a = _conv_norm_relu(a, unit)
    b = _conv_norm_relu(z, gsc.pointwise)
    return _conv_norm_relu(a * b if gate == "product" else a + b, gsc.fuse) + z


@pytest.mark.parametrize("gate", ["product", "sum"])
def test_gsc_matches_its_formula(gate):
    gsc = GatedSpatialConv(6, gate=gate)
    randomise(gsc)
    z = torch.randn(2, 6, 4, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(gsc(z), _reference_gsc(gsc, z, gate), rtol=1e-4, atol=1e-5)


def test_gsc_parameter_count_follows_public_code():
    """Public code: two 3^3 conv blocks in the spatial branch, 1^3 blocks for the gate and the fusion;
    each block conv (weights + bias) + InstanceNorm (ours affine: 2 C)."""
    c = 8
    expected = 2 * (27 * c * c + c + 2 * c) + 2 * (c * c + c + 2 * c)
    assert sum(p.numel() for p in GatedSpatialConv(c).parameters()) == expected
    assert sum(p.numel() for p in GatedSpatialConv(c, spatial_convs=1).parameters()) == expected - (27 * c * c + 3 * c)


def test_channel_layer_norm_normalises_each_voxel_over_channels():
    ln = ChannelLayerNorm(5)
    x = torch.randn(2, 5, 3, 4, 2) * 3 + 1
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 4, 1), (5,)).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(ln(x), ref)


@pytest.mark.parametrize("depth", [1, 2])
def test_tsmamba_block_shape_and_gradients(depth):
    block = TSMambaBlock(8, depth=depth, d_state=4)
    x = torch.randn(1, 8, 3, 5, 7, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    _assert_all_grads(block)


def test_tsmamba_block_is_gsc_then_mamba_then_residual_mlp():
    """z <- GSC(z); z <- z + ToM(LN(z)) per layer; z <- z + MLP(LN(z)) with MLP = 1^3 conv C -> 2C, GELU,
    1^3 conv 2C -> C (paper). With the ToM outputs zeroed the Mamba layers are identities and the block
    is the GSC formula followed by the residual MLP formula."""
    block = TSMambaBlock(8, depth=2, d_state=4)
    randomise(block.gsc)
    randomise(block.mlp)
    randomise(block.mlp_norm)
    with torch.no_grad():
        for layer in block.mamba:
            layer.mixer.out_proj.weight.zero_()
        x = torch.randn(1, 8, 2, 3, 4)
        g = _reference_gsc(block.gsc, x, "product")
        h = F.layer_norm(g.movedim(1, -1), (8,), block.mlp_norm.weight, block.mlp_norm.bias).movedim(-1, 1)
        mlp = F.conv3d(F.gelu(F.conv3d(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight,
                       block.mlp.fc2.bias)
        torch.testing.assert_close(block(x), g + mlp, rtol=1e-4, atol=1e-5)
    assert sum(isinstance(m, MambaLayer) for m in block.mamba) == 2


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
