"""Depthwise causal 1D convolution (the Mamba mixer's short conv), causal-conv1d's convention.

    y[b, d, t] = act( bias[d] + Σ_{k<W} weight[d, k] · x[b, d, t - (W-1) + k] ),  x[·, ·, <0] = 0

Runs causal-conv1d's CUDA kernel for CUDA tensors when it is installed (the ``[cuda]`` extra),
else ``F.conv1d`` with ``groups = D`` and W-1 zeros of left padding (any device). Under
``torch.compile`` dynamo never traces the dispatch: inference calls the opaque custom op
``torch.ops.nnunet_ext.causal_conv1d`` (computed in x's dtype), calls that need gradients run
eagerly behind a graph break (see :mod:`nnunet_ext.ops._opaque`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_ext.ops import _opaque, backends

ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d(x, weight, bias=None, activation=None, backend=None):
    """Depthwise causal conv over the last axis.

    Args:
        x: (B, D, L).
        weight: (D, W) one filter per channel; ``weight[:, -1]`` multiplies the current token.
        bias: optional (D,).
        activation: None, "silu" or "swish" (the same).
        backend: None/'auto' | 'cuda' | 'torch' (None reads ``$NNUNET_EXT_SCAN_BACKEND``;
            'triton'/'fused' mean the PyTorch version here).

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
    args = (x, weight, bias, activation, backend)
    if not _opaque.compiling():
        return _dispatch(*args)
    if _opaque.needs_grad(x, weight, bias):
        return _dispatch_graph_break(*args)
    return _CONV_OP(*args)


def _dispatch(x, weight, bias, activation, backend):
    """Pick the back-end for ``x`` and run it (eagerly); arguments as :func:`causal_conv1d`."""
    if backends.resolve_backend(x, backend, op="conv") == "cuda":
        return backends.causal_conv1d_cuda_fn()(x, weight, bias=bias, activation=activation)
    return causal_conv1d_torch(x, weight, bias, activation)


def causal_conv1d_torch(x, weight, bias=None, activation=None):
    """PyTorch version of :func:`causal_conv1d` (same arguments, no checks)."""
    width = weight.shape[1]
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(y) if activation is not None else y


# ---------------------------------------------------------------------------------------------
# while torch.compile traces (see nnunet_ext.ops._opaque)
# ---------------------------------------------------------------------------------------------

_dispatch_graph_break = _opaque.graph_break(_dispatch)


@torch.library.custom_op(
    "nnunet_ext::causal_conv1d", mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor? bias, str? activation, str? backend) -> Tensor")
def _conv_op(x, weight, bias, activation, backend):
    """:func:`causal_conv1d` computed in x's dtype (weight and bias cast to it, autocast off,
    so the dtype does not depend on the autocast state the compiled code runs in);
    contiguous (B, D, L)."""
    with torch.autocast(x.device.type, enabled=False):
        b = None if bias is None else bias.to(x.dtype)
        return _dispatch(x, weight.to(x.dtype), b, activation, backend).to(x.dtype).contiguous()


@_conv_op.register_fake
def _conv_op_fake(x, weight, bias, activation, backend):
    return x.new_empty(x.shape)


_conv_op.register_autograd(_opaque.no_backward("nnunet_ext::causal_conv1d", "nnunet_ext.ops.causal_conv1d"))
_CONV_OP = torch.ops.nnunet_ext.causal_conv1d
