"""EPA and the UNETR++ transformer block: shapes, the paper's maths, linear-in-N spatial branch, gradients."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_ext.blocks.epa import EfficientPairedAttention, EPABlock


def _reference_epa(epa: EfficientPairedAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations written out head by head (no reshapes shared with the module)."""
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
    return torch.cat((epa.out_spatial(s), epa.out_channel(ch)), -1)


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


@pytest.mark.parametrize("n,c,heads,p,expect_p", [
    (96, 16, 4, 32, 32),
    (60, 24, 4, 64, 60),  # p capped at N
    (27, 8, 2, 8, 8),
])
def test_epa_shapes_and_attention_maps(n, c, heads, p, expect_p):
    epa = EfficientPairedAttention(n, c, heads, p).eval()
    x = torch.randn(2, n, c)
    out, attn = epa(x, return_attention=True)
    d = c // heads
    assert out.shape == (2, n, c)
    assert attn["spatial"].shape == (2, heads, n, expect_p)  # N x p per head
    assert attn["channel"].shape == (2, heads, d, d)  # C/h x C/h per head
    for a in attn.values():
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))


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


def test_epa_spatial_branch_never_forms_n_by_n():
    n, p, c = 512, 16, 32
    epa = EfficientPairedAttention(n, c, 4, p).eval()
    rec = _ShapeRecorder()
    with torch.no_grad(), rec:
        epa(torch.randn(1, n, c))
    assert rec.shapes, "nothing recorded"
    assert (1, 4, n, p) in rec.shapes
    for shape in rec.shapes:
        assert sum(1 for s in shape if s == n) <= 1, f"an N x N intermediate {shape}"
        assert math.prod(shape) <= 4 * n * c, f"intermediate {shape} larger than the qkvv output"


def test_epa_key_and_value_share_the_token_projection():
    shared = EfficientPairedAttention(64, 16, 4, 16)
    separate = EfficientPairedAttention(64, 16, 4, 16, share_token_proj=False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_separate - n_shared == 64 * 16 + 16
    # parameter count of the paper's block: qkvv (no bias), one token projection, 2 temperatures, 2 out projections
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


def test_epa_block_structure():
    blk = EPABlock((4, 6, 8), 16, num_heads=4, proj_size=32)
    assert blk.pos_embed.shape == (1, 4 * 6 * 8, 16)
    assert torch.all(blk.gamma == 1e-6)  # layer scale init (paper)
    assert blk.attn.num_tokens == 192 and blk.attn.proj_size == 32
    # at init the attention branch is scaled by 1e-6: the block is ~ y + Conv1x1(ResBlock(y)) of its input
    blk.eval()
    x = torch.randn(2, 16, 4, 6, 8)
    with torch.no_grad():
        expected = x + blk.proj(blk.conv(x))
        torch.testing.assert_close(blk(x), expected, rtol=1e-4, atol=1e-4)


def test_epa_block_runs_on_meta():
    with torch.device("meta"):
        blk = EPABlock((8, 16, 16), 32, 4, 64)
        out = blk(torch.empty(2, 32, 8, 16, 16))
    assert out.shape == (2, 32, 8, 16, 16) and out.device.type == "meta"


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_tokens=16, channels=10, num_heads=4), "divisible by num_heads"),
    (dict(num_tokens=16, channels=8, num_heads=4, fusion="mean"), "fusion"),
    (dict(num_tokens=0, channels=8, num_heads=4), "num_tokens"),
])
def test_epa_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EfficientPairedAttention(**kwargs)


def test_wrong_input_size_is_named():
    with pytest.raises(ValueError, match=r"spatial size \[2, 4, 4\]"):
        EPABlock((2, 4, 4), 8, 4, 8)(torch.randn(1, 8, 2, 4, 8))
    with pytest.raises(ValueError, match=r"\(B, 32, 8\)"):
        EfficientPairedAttention(32, 8, 4, 8)(torch.randn(1, 31, 8))
