"""causal_conv1d: depthwise causal conv equal to a naive loop; activation; gradients; bad input."""

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.ops import causal_conv1d


def naive(x, weight, bias=None, activation=None):
    """y[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - (W-1) + k], zeros before t = 0."""
    b, d, length = x.shape
    width = weight.shape[1]
    y = torch.zeros_like(x)
    for t in range(length):
        for k in range(width):
            s = t - (width - 1) + k
            if s >= 0:
                y[:, :, t] += weight[:, k] * x[:, :, s]
    if bias is not None:
        y = y + bias[:, None]
    return F.silu(y) if activation else y


@pytest.mark.parametrize("shape, width", [((2, 3, 1), 4), ((2, 3, 9), 4), ((1, 5, 17), 2), ((2, 4, 3), 4)])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_naive_loop(shape, width, activation, with_bias):
    x = torch.randn(shape)
    w = torch.randn(shape[1], width)
    b = torch.randn(shape[1]) if with_bias else None
    y = causal_conv1d(x, w, b, activation=activation)
    assert y.shape == x.shape
    torch.testing.assert_close(y, naive(x, w, b, activation), rtol=1e-5, atol=1e-6)


def test_is_causal():
    x = torch.randn(1, 2, 10)
    w = torch.randn(2, 4)
    y = causal_conv1d(x, w)
    x2 = x.clone()
    x2[..., 6:] = 100.0  # the future must not change the past
    torch.testing.assert_close(causal_conv1d(x2, w)[..., :6], y[..., :6])


def test_equals_nn_conv1d_with_padding():
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 6, 11)
    ref = conv(x)[..., :11]
    torch.testing.assert_close(causal_conv1d(x, conv.weight.squeeze(1), conv.bias), ref)


def test_gradcheck():
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation="silu"), (x, w, b))


def test_bf16_autocast():
    x = torch.randn(1, 4, 12, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_conv1d(x, w, activation="silu")
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_meta_device():
    y = causal_conv1d(torch.empty(1, 4, 12, device="meta"), torch.empty(4, 4, device="meta"))
    assert y.device.type == "meta" and y.shape == (1, 4, 12)


@pytest.mark.parametrize("args, message", [
    (dict(x=torch.zeros(3, 5), weight=torch.zeros(3, 4)), "x must be"),
    (dict(x=torch.zeros(1, 3, 5), weight=torch.zeros(3, 1, 4)), r"weight must be \(D, W\)"),
    (dict(x=torch.zeros(1, 3, 5), weight=torch.zeros(2, 4)), r"weight must be \(D, W\)"),
    (dict(x=torch.zeros(1, 3, 5), weight=torch.zeros(3, 4), bias=torch.zeros(4)), "bias must be"),
    (dict(x=torch.zeros(1, 3, 5), weight=torch.zeros(3, 4), activation="relu"), "activation must be"),
])
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        causal_conv1d(**args)
