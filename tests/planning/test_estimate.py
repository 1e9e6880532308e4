"""The memory estimate: its tracker against a hand count, autocast's CUDA dtypes, the scan model."""

import pytest
import torch
from torch import nn

from nnunet_ext.planning.estimate import (CudaAutocastPolicy, autocast_context, estimate_network_memory,
                                          scan_memory_model)

B, V = 2, 8 * 8 * 8


def _stack():
    return nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.Conv3d(8, 2, 1))


def test_total_matches_a_hand_count_of_a_conv_stack():
    """fp32: parameters + momentum + batch + targets + the hidden map conv 2 keeps + the network's output
    (nnU-Net's train_step holds it until it returns) + at conv 2's backward its input gradient and its
    parameter gradients (+ the 4-byte loss and its seed gradient)."""
    est = estimate_network_memory(_stack, lambda net: (lambda out, target: out.sum()), (B, 1, 8, 8, 8), "fp32")
    f32 = 4
    p1, p2 = (8 * 27 + 8) * f32, (2 * 8 + 2) * f32
    params = p1 + p2
    batch, targets = B * V * f32, B * V * 2   # float32 batch, int16 targets
    hidden = B * 8 * V * f32                  # conv 1's output, kept by conv 2 for its backward
    output = B * 2 * V * f32
    at_conv2_backward = params + params + batch + targets + hidden + output + hidden + p2 + 2 * f32
    assert est.total == at_conv2_backward
    assert est.parameters == params and est.optimizer == params and est.gradients == params
    assert est.activations == hidden + output + f32  # live after forward and loss: hidden map, output, loss
    assert est.inputs == batch + targets


def test_amp_halves_what_convolutions_keep():
    """amp: conv 1's output is float16 (half the hidden map); autocast also keeps float16 copies of the
    weights and the input batch, which the count must include."""
    fp32 = estimate_network_memory(_stack, lambda net: (lambda out, target: out.float().sum()), (B, 1, 8, 8, 8),
                                   "fp32")
    amp = estimate_network_memory(_stack, lambda net: (lambda out, target: out.float().sum()), (B, 1, 8, 8, 8),
                                  "amp")
    hidden16 = B * 8 * V * 2
    assert amp.activations >= hidden16 + B * V * 2  # fp16 hidden + fp16 copy of the batch
    assert amp.activations < fp32.activations + B * V * 2


def test_cuda_autocast_rules_on_cpu():
    x = torch.randn(2, 4, 8)
    with autocast_context("amp"):
        h = nn.functional.linear(x, torch.randn(6, 8))
        assert h.dtype == torch.float16                                   # CPU autocast: float16 matmul
        assert torch.softmax(h, -1).dtype == torch.float32                # CUDA: softmax in float32
        assert nn.functional.layer_norm(h, (6,)).dtype == torch.float32   # CUDA: layer norm in float32
        assert h.sum().dtype == torch.float32
        assert (h * 2).dtype == torch.float16                             # the rest keeps its dtype
    assert isinstance(CudaAutocastPolicy(), torch.overrides.TorchFunctionMode)


def _attention(dropout):
    from nnunet_ext.blocks.transformer import MultiHeadSelfAttention

    return lambda: MultiHeadSelfAttention(64, num_heads=8, attn_dropout=dropout)


def test_amp_counts_attention_as_the_cuda_kernels_keep_it():
    """amp: attention with dropout keeps what CUDA's flash / memory-efficient kernels keep (linear in the
    tokens), as without dropout; in fp32 on the CPU (math path) the (B, heads, N, N) weights are kept."""
    n, heads = 512, 8
    weights16 = B * heads * n * n * 2
    loss = lambda net: (lambda out, target: out.float().sum())  # noqa: E731
    amp = {p: estimate_network_memory(_attention(p), loss, (B, n, 64), "amp") for p in (0.0, 0.1)}
    assert amp[0.1].activations == amp[0.0].activations < weights16 / 4
    fp32 = estimate_network_memory(_attention(0.1), loss, (B, n, 64), "fp32")
    assert fp32.activations > 2 * weights16  # float32 weights and the dropout mask, N x N each
    # positional arguments after dropout_p (is_causal) are kept
    q = torch.randn(1, 2, 8, 4)
    with autocast_context("amp"):
        causal = nn.functional.scaled_dot_product_attention(q, q, q, None, 0.5, True)
    torch.testing.assert_close(causal.float(), nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True),
                               atol=1e-2, rtol=1e-2)
    # the rule holds inside the estimate's autocast context only
    attention = _attention(0.5)().train()
    x = torch.randn(1, 16, 64)
    with autocast_context("amp"):
        assert torch.equal(attention(x), attention(x))
    assert not torch.equal(attention(x), attention(x))


@pytest.mark.parametrize("profile", ["cuda", "fused"])
def test_scan_model_has_the_scans_shapes_and_gradients(profile):
    from nnunet_ext.ops import selective_scan

    b, e, n, length = 1, 4, 3, 10
    u = torch.randn(b, e, length, requires_grad=True)
    delta = torch.randn(b, e, length, requires_grad=True)
    A = -torch.rand(e, n)
    Bm, Cm = torch.randn(b, n, length, requires_grad=True), torch.randn(b, n, length)
    z = torch.randn(b, e, length, requires_grad=True)
    reference = selective_scan(u, delta, A, Bm, Cm, torch.ones(e), z=z, delta_softplus=True)
    with scan_memory_model(profile):
        y = selective_scan(u, delta, A, Bm, Cm, torch.ones(e), z=z, delta_softplus=True)
        y.sum().backward()
    assert y.shape == reference.shape and y.dtype == reference.dtype
    for t in (u, delta, Bm, z):
        assert t.grad is not None and t.grad.shape == t.shape
    # outside the context the real scan runs again
    torch.testing.assert_close(selective_scan(u, delta, A, Bm, Cm, torch.ones(e), z=z, delta_softplus=True),
                               reference)
