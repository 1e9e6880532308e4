"""EPA and the UNETR++ transformer block: shapes, the paper's maths, linear-in-N spatial branch, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_ext.blocks.epa import EfficientPairedAttention, EPABlock
from tests.weights import randomise


def _reference_epa(epa: EfficientPairedAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations (UNETR++, Sec. III-B) head by head with plain torch ops and the
    module's weights (no reshapes or sub-module calls shared with it)."""
    b, n, c = x.shape
    h, d = epa.num_heads, epa.head_dim
    y = x @ epa.qkvv.weight.T  # (B, N, 4C) = [Q | K | V_channel | V_spatial]
    E, e_bias = epa.token_proj.weight, epa.token_proj.bias  # (p, N), (p,)
    F_, f_bias = (E, e_bias) if epa.value_proj is None else (epa.value_proj.weight, epa.value_proj.bias)
    spatial, channel = [], []
    for i in range(h):
        sl = lambda part: y[..., part * c + i * d: part * c + (i + 1) * d]  # noqa: E731  (B, N, d)
        q, k, vc, vs = sl(0), sl(1), sl(2), sl(3)
        # spatial: K_p = E K, V_p = F V_s (p x d); A_s = softmax(tau_s Q K_p^T) (N x p); out = A_s V_p
        k_p = E @ k + e_bias[:, None]
        v_p = F_ @ vs + f_bias[:, None]
        a_s = torch.softmax(epa.temperature_spatial[i] * q @ k_p.transpose(1, 2), dim=-1)
        spatial.append(a_s @ v_p)
        # channel: Q, K L2-normalised over tokens; A_c = softmax(tau_c Q^T K) (d x d); out_i = sum_j A_c[i,j] V_j
        qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
        a_c = torch.softmax(epa.temperature_channel[i] * qn.transpose(1, 2) @ kn, dim=-1)
        channel.append(vc @ a_c.transpose(1, 2))
    s, ch = torch.cat(spatial, -1), torch.cat(channel, -1)
    if epa.fusion == "sum":
        return s + ch
    return torch.cat((s @ epa.out_spatial.weight.T + epa.out_spatial.bias,
                      ch @ epa.out_channel.weight.T + epa.out_channel.bias), -1)


def _reference_residual_block(block, y: torch.Tensor) -> torch.Tensor:
    """MONAI's UnetResBlock as UNETR++'s public code uses it, eval mode: conv-BN-LReLU, conv-BN, + y, LReLU."""
    def conv_bn(h, unit):
        bn = unit.norm
        h = F.conv3d(h, unit.conv.weight, unit.conv.bias, padding=1)
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)

    h = F.leaky_relu(conv_bn(y, block.conv1), 0.01)
    return F.leaky_relu(conv_bn(h, block.conv2) + y, 0.01)


def _reference_epa_block(blk: EPABlock, x: torch.Tensor) -> torch.Tensor:
    """UNETR++ Fig. 2: t = x + pos; t = t + gamma * EPA(LN(t)); y = map(t); y + Conv1x1(ResBlock(y))."""
    b, c, *size = x.shape
    t = x.flatten(2).transpose(1, 2) + blk.pos_embed
    t = t + blk.gamma * _reference_epa(blk.attn, F.layer_norm(t, (c,), blk.norm.weight, blk.norm.bias))
    y = t.transpose(1, 2).reshape(b, c, *size)
    conv1x1 = blk.proj[1]
    return y + F.conv3d(_reference_residual_block(blk.conv[0], y), conv1x1.weight, conv1x1.bias)


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("share,fusion", [(True, "concat"), (False, "concat"), (True, "sum")])
def test_epa_matches_the_papers_equations(share, fusion):
    epa = EfficientPairedAttention(80, 16, 4, 24, share_token_proj=share, fusion=fusion).eval()
    with torch.no_grad():  # make the temperatures and biases non-trivial
        epa.temperature_spatial.uniform_(0.5, 2.0)
        epa.temperature_channel.uniform_(0.5, 2.0)
        epa.token_proj.bias.normal_()
        epa.qkvv.weight.normal_(0, 0.3)
    x = torch.randn(2, 80, 16)
    torch.testing.assert_close(epa(x), _reference_epa(epa, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n, c, heads, p, p_used", [
    (512, 32, 4, 16, 16),
    (60, 24, 4, 64, 60),  # p capped at N
])
def test_epa_attention_maps_are_n_by_p_and_d_by_d_never_n_by_n(n, c, heads, p, p_used):
    epa = EfficientPairedAttention(n, c, heads, p).eval()
    rec = _ShapeRecorder()
    with torch.no_grad(), rec:
        out = epa(torch.randn(1, n, c))
    assert out.shape == (1, n, c)
    assert (1, heads, n, p_used) in rec.shapes  # spatial attention: N x p per head
    assert (1, heads, c // heads, c // heads) in rec.shapes  # channel attention: C/h x C/h per head
    for shape in rec.shapes if p_used < n else ():  # (with p = N an N x p map is N x N by definition)
        assert sum(1 for s in shape if s == n) <= 1, f"an N x N intermediate {shape}"
        assert math.prod(shape) <= 4 * n * c, f"intermediate {shape} larger than the qkvv output"


def test_epa_key_and_value_share_the_token_projection():
    shared = EfficientPairedAttention(64, 16, 4, 16)
    separate = EfficientPairedAttention(64, 16, 4, 16, share_token_proj=False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_separate - n_shared == 64 * 16 + 16
    # parameter count of the paper's block (E = F shared; the public ACDC/Lung code has both): qkvv (no bias),
    # one token projection, 2 temperatures, 2 out projections
    assert n_shared == 16 * 64 + (64 * 16 + 16) + 2 * 4 + 2 * (16 * 8 + 8)


@pytest.mark.parametrize("module_fn,x_shape", [
    (lambda: EfficientPairedAttention(48, 16, 4, 16, share_token_proj=False), (2, 48, 16)),
    (lambda: EfficientPairedAttention(48, 16, 4, 16, fusion="sum"), (2, 48, 16)),
    (lambda: EPABlock((3, 4, 4), 16, 4, 16), (2, 16, 3, 4, 4)),
    (lambda: EPABlock((2, 4, 6), 8, 2, 8, conv_blocks=2, share_token_proj=False), (2, 8, 2, 4, 6)),
])
def test_gradient_reaches_every_parameter(module_fn, x_shape):
    m = module_fn().train()
    x = torch.randn(*x_shape, requires_grad=True)
    out = m(x)
    assert out.shape == x_shape
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad.abs().sum() > 0


def test_epa_block_matches_the_papers_figure():
    blk = EPABlock((3, 4, 5), 8, num_heads=2, proj_size=16).eval()
    assert torch.all(blk.gamma == 1e-6)  # paper: layer scale initialised to 1e-6
    randomise(blk)
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 8, 3, 4, 5)
        torch.testing.assert_close(blk(x), _reference_epa_block(blk, x), rtol=1e-4, atol=1e-4)


def test_epa_block_runs_on_meta():
    with torch.device("meta"):
        blk = EPABlock((8, 16, 16), 32, 4, 64)
        out = blk(torch.empty(2, 32, 8, 16, 16))
    assert out.shape == (2, 32, 8, 16, 16) and out.device.type == "meta"
