"""Fused CPU selective scan: numba kernels behind a ``torch.autograd.Function``.

Mamba-1 selective scan with mamba-ssm's argument convention (see
:func:`nnunet_ext.ops.reference.selective_scan_sequential`, the definition)::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = <C_t, h_t> + D * u_t,
    delta = softplus(delta_raw + delta_bias),                  out = y * silu(z)

Forward: parallel over (batch, group of 16 channels), sequential over the L tokens with the
N-vector states kept per channel; it writes the output and keeps only the state entering every
chunk of ``CHUNK_T`` tokens -- (B, E, ceil(L / T), Np) floats, Np = N rounded up to 16 -- and,
when z is given, the pre-gate y (B, E, L) for the backward.

Backward: parallel over (batch, group of channels; the groups do not depend on the thread count);
the chunks are visited in reverse and, inside each, every channel of the group: the chunk's decays
exp(delta A) and states are recomputed from its checkpoint into T x 16 scratch buffers and the
adjoint recurrence runs backwards through them (the adjoint state of each channel is carried to
the previous chunk). dB and dC, shared by all channels, are accumulated in one partial buffer per
work item and summed afterwards in a fixed order; dA, dD and d delta_bias are written per
(batch, channel) and summed over the batch. No B * E * N * L tensor is ever allocated, and the
results are bit-identical for any number of threads.

The kernels themselves are in :mod:`nnunet_ext.ops._scan_fused_kernels` (they use their own
vectorisable float32 exp / softplus, see there).

Compute is float32 whatever the input dtypes (autocast included); y is returned in u's dtype and
each gradient in its input's dtype. numba is imported on first use only, compiled functions are
cached on disk (and compiled in memory if no cache directory is writable).
"""

from __future__ import annotations

import os
import threading

import torch

__all__ = ["selective_scan_fused", "fused_available", "CHUNK_T"]

#: Tokens per checkpoint chunk of the backward (chosen by measurement).
CHUNK_T = 128
#: Work items (batch element, channel group) the backward aims for; its dB / dC partial sums take
#: 2 * B * G * L * Np float32 (G = ceil(BACKWARD_ITEMS / B) channel groups, at most E).
BACKWARD_ITEMS = 4
_LANES = 16  # the kernels' vector width (nnunet_ext.ops._scan_fused_kernels.W), kept here so that
# importing this module does not import numba

_lock = threading.RLock()  # numba's workqueue threading layer must not be entered concurrently
_kernels: dict = {}
_available: bool | None = None


def _numba():
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and not getattr(_numba, "_layer_set", False):
        # 'forksafe' prefers TBB / Intel OpenMP and else the built-in workqueue, never GNU OpenMP,
        # which aborts a forked child that uses it (data-loader workers are forked on Linux).
        # This only takes effect if numba's thread pool has not been launched yet.
        numba.config.THREADING_LAYER = "forksafe"
        _numba._layer_set = True
    return numba


def _get_kernels(cache: bool = True):
    """(forward, backward) numba dispatchers, built once per process."""
    key = "cached" if cache else "plain"
    if key not in _kernels:
        with _lock:
            if key not in _kernels:
                _numba()
                from nnunet_ext.ops import _scan_fused_kernels

                _kernels[key] = _scan_fused_kernels.build(cache=cache)
    return _kernels[key]


def _threads() -> int:
    """Threads for the kernels: torch's intra-op count, capped by the size of numba's pool."""
    return max(1, min(torch.get_num_threads(), _numba().config.NUMBA_NUM_THREADS))


def _call(which: int, *args):
    """Run kernel ``which`` (0 forward, 1 backward) on as many threads as torch uses, serialised."""
    numba = _numba()
    with _lock:
        numba.set_num_threads(_threads())
        try:
            return _get_kernels(True)[which](*args)
        except OSError:
            # writing the on-disk cache failed after compiling: keep going without a cache
            return _get_kernels(False)[which](*args)


def fused_available() -> bool:
    """True when numba imports and the forward kernel compiles (or loads from the cache) and runs."""
    global _available
    if _available is None:
        try:
            u = torch.zeros(1, 1, 2)
            y = selective_scan_fused(u, u, torch.zeros(1, 1), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2))
            _available = bool(y.shape == (1, 1, 2))
        except Exception:  # noqa: BLE001 -- numba missing, compile failure, unsupported platform ...
            _available = False
    return _available


def _np32(t: torch.Tensor):
    """A C-contiguous float32 numpy view (or copy) of ``t``."""
    import numpy as np

    return np.ascontiguousarray(t.detach().contiguous().float().numpy())


def _np32_tokens_major(t: torch.Tensor):
    """(B, N, L) -> C-contiguous float32 numpy (B, L, N)."""
    import numpy as np

    return np.ascontiguousarray(t.detach().float().transpose(1, 2).contiguous().numpy())


def work_groups(batch: int, channels: int, threads: int | None = None) -> int:
    """Channel groups per batch element for the backward: B * G >= :data:`BACKWARD_ITEMS` work items
    where the channels allow. It does not depend on the thread count (``threads`` is ignored), so
    neither do the dB / dC partial sums: results are bit-identical for any number of threads."""
    return max(1, min(channels, -(-BACKWARD_ITEMS // max(batch, 1))))


class _FusedSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        import numpy as np

        nb, ne, L = u.shape
        N = A.shape[1]
        T = int(CHUNK_T)
        nchunks = max(1, -(-L // T))
        need_grad = any(ctx.needs_input_grad[:8])
        save_y = need_grad and z is not None
        with torch.autocast("cpu", enabled=False):
            arrays = list(_prepare(u, delta, A, B, C, D, z, delta_bias))
            Np = arrays[2].shape[1]
            At = np.zeros((N, -(-ne // _LANES) * _LANES), dtype=np.float32)  # (N, Ep): channels in lanes
            At[:, :ne] = arrays[2][:, :N].T
            arrays[2] = At
            out = np.empty((nb, ne, L), dtype=np.float32)
            last = np.empty((nb, ne, Np), dtype=np.float32)
            ckpt = np.empty((nb, ne, nchunks, Np) if need_grad else (1, 1, 1, Np), dtype=np.float32)
            ysave = np.empty((nb, ne, L) if save_y else (1, 1, 1), dtype=np.float32)
            _call(0, *arrays, bool(delta_softplus), z is not None, need_grad, save_y, T, out, last, ckpt, ysave)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
            ctx.ckpt = ckpt
            ctx.ysave = ysave
            ctx.T = T
            ctx.delta_softplus = bool(delta_softplus)
        ctx.return_last_state = bool(return_last_state)
        y = torch.from_numpy(out).to(u.dtype)
        if return_last_state:
            return y, torch.from_numpy(np.ascontiguousarray(last[..., :N]))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        import numpy as np

        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        nb, ne, L = u.shape
        N = A.shape[1]
        G = work_groups(nb, ne)
        with torch.autocast("cpu", enabled=False):
            arrays = _prepare(u, delta, A, B, C, D, z, delta_bias)
            Np = arrays[2].shape[1]
            dout = _np32(grads[0])
            has_dlast = ctx.return_last_state and len(grads) > 1 and grads[1] is not None
            dlast = _pad_last(_np32(grads[1]), Np) if has_dlast else np.zeros((1, 1, Np), dtype=np.float32)
            du = np.empty((nb, ne, L), dtype=np.float32)
            ddelta = np.empty((nb, ne, L), dtype=np.float32)
            dz = np.empty((nb, ne, L), dtype=np.float32) if z is not None else np.zeros((1, 1, 1), np.float32)
            dA_part = np.empty((nb, ne, Np), dtype=np.float64)
            dBt_part = np.zeros((nb, G, L, Np), dtype=np.float32)
            dCt_part = np.zeros((nb, G, L, Np), dtype=np.float32)
            dD_part = np.empty((nb, ne), dtype=np.float64)
            dbias_part = np.empty((nb, ne), dtype=np.float64)
            _call(1, *arrays, ctx.delta_softplus, z is not None, ctx.T, G, dout, dlast, has_dlast, ctx.ckpt,
                  ctx.ysave, du, ddelta, dz, dA_part, dBt_part, dCt_part, dD_part, dbias_part)

            def tokens_to_nl(part, like):  # (B, G, L, Np) -> (B, N, L) [or (B, 1, N, L)] in like's dtype
                acc = part[:, 0]
                for g in range(1, G):  # a fixed order: the same sums whatever the thread count
                    acc += part[:, g]
                t = torch.from_numpy(acc[..., :N])
                return t.transpose(1, 2).contiguous().reshape(like.shape).to(like.dtype)

            need = ctx.needs_input_grad
            g_u = torch.from_numpy(du).to(u.dtype) if need[0] else None
            g_delta = torch.from_numpy(ddelta).to(delta.dtype) if need[1] else None
            g_A = torch.from_numpy(np.ascontiguousarray(dA_part.sum(0)[:, :N])).to(A.dtype) if need[2] else None
            g_B = tokens_to_nl(dBt_part, B) if need[3] else None
            g_C = tokens_to_nl(dCt_part, C) if need[4] else None
            g_D = torch.from_numpy(dD_part.sum(0)).to(D.dtype) if D is not None and need[5] else None
            g_z = torch.from_numpy(dz).to(z.dtype) if z is not None and need[6] else None
            g_bias = (torch.from_numpy(dbias_part.sum(0)).to(delta_bias.dtype)
                      if delta_bias is not None and need[7] else None)
        return g_u, g_delta, g_A, g_B, g_C, g_D, g_z, g_bias, None, None


def _padded_states(n: int) -> int:
    """N rounded up to a multiple of the kernels' vector width (16 float32 lanes)."""
    return -(-max(n, 1) // _LANES) * _LANES


def _pad_last(a, Np: int):
    """(..., N) float32 numpy -> C-contiguous (..., Np), zeros in the padded lanes."""
    import numpy as np

    if a.shape[-1] == Np:
        return np.ascontiguousarray(a)
    out = np.zeros(a.shape[:-1] + (Np,), dtype=np.float32)
    out[..., : a.shape[-1]] = a
    return out


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    """Float32 numpy arrays for the kernels: u, delta (B, E, L), A (E, Np), Bt, Ct (B, L, Np), D (E,),
    z (B, E, L), bias (E,) (dummies for None); the state axis zero-padded to Np, a multiple of the
    vector width."""
    import numpy as np

    ne = u.shape[1]
    Np = _padded_states(A.shape[1])
    if B.dim() == 4:  # (B, 1, N, L): mamba-ssm's grouped layout with one group
        B = B[:, 0]
    if C.dim() == 4:
        C = C[:, 0]
    zero_e = np.zeros(ne, dtype=np.float32)
    return (
        _np32(u),
        _np32(delta),
        _pad_last(_np32(A), Np),
        _pad_last(_np32_tokens_major(B), Np),
        _pad_last(_np32_tokens_major(C), Np),
        _np32(D) if D is not None else zero_e,
        _np32(z) if z is not None else np.zeros((1, 1, 1), dtype=np.float32),
        _np32(delta_bias) if delta_bias is not None else zero_e,
    )


def _check(u, delta, A, B, C, D, z, delta_bias):
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"selective_scan_fused: {name} must be a tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"selective_scan_fused runs on CPU tensors only; {name} is on {t.device} "
                             "(use the 'cuda' or 'torch' back-end of selective_scan for other devices)")
        if t.is_complex():
            raise TypeError(f"selective_scan_fused: complex {name} is not supported")
    if u.dim() != 3:
        raise ValueError(f"selective_scan_fused: u must be (B, E, L), got {tuple(u.shape)}")
    nb, ne, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan_fused: delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan_fused: z {tuple(z.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != ne:
        raise ValueError(f"selective_scan_fused: A must be (E, N) = ({ne}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and tuple(t.shape) == (nb, N, L)) or (t.dim() == 4 and tuple(t.shape) == (nb, 1, N, L))
        if not ok:
            raise ValueError(f"selective_scan_fused: {name} must be input-dependent (B, N, L) = "
                             f"({nb}, {N}, {L}), got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (ne,):
            raise ValueError(f"selective_scan_fused: {name} must be (E,) = ({ne},), got {tuple(t.shape)}")


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Selective scan on CPU with the fused numba kernel; differentiable in every tensor argument.

    Shapes (mamba-ssm convention): u, delta, z (B, E, L); A (E, N); B, C (B, N, L); D, delta_bias
    (E,). Returns y (B, E, L) in u's dtype, and with ``return_last_state`` also the final state
    (B, E, N) in float32 (its gradient is propagated too).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    return _FusedSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                     bool(return_last_state))
