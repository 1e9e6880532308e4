"""Depthwise causal 1D convolution (the Mamba mixer's short conv), causal-conv1d's convention.

    y[b, d, t] = act( bias[d] + Σ_{k<W} weight[d, k] · x[b, d, t - (W-1) + k] ),  x[·, ·, <0] = 0

Runs causal-conv1d's CUDA kernel for CUDA tensors when it is installed (the ``[cuda]`` extra),
else ``F.conv1d`` with ``groups = D`` and W-1 zeros of left padding (any device).
"""

from __future__ import annotations

import torch.nn.functional as F

from nnunet_ext.ops import backends

ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d(x, weight, bias=None, activation=None, backend=None):
    """Depthwise causal conv over the last axis.

    Args:
        x: (B, D, L).
        weight: (D, W) one filter per channel; ``weight[:, -1]`` multiplies the current token.
        bias: optional (D,).
        activation: None, "silu" or "swish" (the same).
        backend: None/'auto' | 'cuda' | 'torch' (None reads ``$NNUNET_EXT_SCAN_BACKEND``;
            'fused'/'reference' mean the PyTorch version here).

    Returns:
        (B, D, L), x's dtype.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, channels D, length L), got {tuple(x.shape)}")
    d = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"causal_conv1d: weight must be (D, W) = ({d}, W), got {tuple(weight.shape)} "
                         "(an nn.Conv1d's weight (D, 1, W) needs .squeeze(1))")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"causal_conv1d: bias must be (D,) = ({d},), got {tuple(bias.shape)}")
    if backends.resolve_backend(x, backend, op="conv") == "cuda":
        return backends.causal_conv1d_cuda_fn()(x, weight, bias=bias, activation=activation)
    return causal_conv1d_torch(x, weight, bias, activation)


def causal_conv1d_torch(x, weight, bias=None, activation=None):
    """PyTorch version of :func:`causal_conv1d` (same arguments, no checks)."""
    width = weight.shape[1]
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(y) if activation is not None else y
