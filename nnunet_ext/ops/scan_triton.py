"""Triton selective scan (the ``triton`` back-end): forward and backward as Triton kernels.

Mamba-1 selective scan with mamba-ssm's argument convention (the definition is
:func:`nnunet_ext.ops.reference.selective_scan_sequential`)::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,   y_t = <C_t, h_t> + D u_t,   out = y ⊙ SiLU(z)
    Δ = softplus(Δ_raw + delta_bias)   (softplus only with ``delta_softplus=True``)

Shapes: u, Δ, z (B, E, L); A (E, N); B, C (B, N, L); D, delta_bias (E,). Triton ships with
PyTorch's Linux CUDA wheels, so this runs at kernel speed on any CUDA GPU with nothing to compile
at install time (Triton compiles each specialisation on first use and caches it on disk).

Design
------
The tokens are cut into chunks of ``T`` (:func:`_tiles`; a power of two). Inside a chunk the
recurrence is a first-order linear recurrence ``h -> α h + x``, whose steps compose associatively
(``(α₁, x₁) then (α₂, x₂) = (α₁α₂, α₂x₁ + x₂)``), so one ``tl.associative_scan`` over a
(channels, N, T) register tile gives every state of the chunk from the state entering it. Every
step is the exact recurrence (products of decays and sums, no division, no exponentials of
cumulative sums), so nothing depends on the size of Δ·A. Compute is float32 whatever the input
dtype (float16 / bfloat16 / float32; float64 input is rounded to float32, as in the fused CPU
kernel); y and every gradient are returned in their tensor's dtype, the last state in float32.

- Forward (:func:`_fwd_kernel`): one program per (batch, block of ``BE`` channels), looping over
  the chunks in order with the (BE, N) state in registers; it writes y and, when a gradient is
  needed, the state entering every chunk (B, E, ceil(L/T), N) -- 1/T of all states: bounded
  extra memory, never B·E·N·L.
- Backward, pass 1 (:func:`_bwd_carry_kernel`): the same grid in reverse chunk order computes
  only the adjoint state entering each chunk from its right,
  ``λ_t = C_t g_t + exp(Δ_{t+1} A) λ_{t+1}`` (g the gradient of the scan output), as a forward
  scan over tiles read in reversed token order (Triton's ``reverse=True`` scans are avoided:
  their results for non-commutative operators have been reported wrong).
- Backward, pass 2 (:func:`_bwd_kernel`): one program per (batch, chunk) -- B·ceil(L/T)
  programs, so the long sequences fill the GPU -- loops over all channels in blocks: it
  recomputes the chunk's states h_{t-1} from the forward checkpoint (a scan of the tokens shifted
  by one, so α_t h_{t-1} is exact, not h_t − x_t) and its adjoint states from pass 1's carries
  (a scan in reversed order, put back in token order by a ``tl.gather``), then forms du, dΔ, dz per
  token, and accumulates dB, dC (sums over channels) in registers, written once per chunk. The
  sums over tokens and batch of dA, dD and d delta_bias are written as per-(batch, chunk) partials
  and summed by PyTorch afterwards. No atomics anywhere: every gradient is deterministic (the same
  bits on every run).

Why this split: the recurrence is sequential along L, so a (batch, channel) program must walk the
chunks in order; but all the expensive per-token work of the backward, and the sum over channels
that dB/dC need, is independent per chunk once the chunk-boundary states (forward) and adjoint
states (pass 1) are known. One program owning a whole chunk across channels sums dB/dC without
atomics or a B·(E/BE)·N·L partial buffer.

Limits: N ≤ :data:`MAX_DSTATE` (mamba-ssm's limit); the tile (BE × next-pow2(N) × T) is kept at
about :data:`TILE_ELEMS` elements (at least 16 tokens, so 2 048 at N 128 and 4 096 at N 256, run
with 8 and 16 warps: :func:`_launch_options`).

Interpreter: with ``TRITON_INTERPRET=1`` set *before this module is imported* (Triton decides at
``@triton.jit`` time), the kernels run on CPU tensors through Triton's interpreter -- that is how
the tests check them without a GPU (slow: keep sizes tiny). :data:`INTERPRET` records the mode.
The interpreter does not check what Triton's compiler checks (types of loop-carried values,
register use); :func:`kernel_launches` gives the arguments of every launch, from which
:mod:`nnunet_ext.bench.triton_compile` compiles each kernel specialisation for real GPU
architectures on any machine (``nnunet-ext gpu-check --compile-only``).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton", "kernel_launches", "KernelLaunch", "KERNELS", "INTERPRET", "MAX_DSTATE",
           "self_check"]

#: True when the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)
INTERPRET = bool(triton.knobs.runtime.interpret)
#: largest state size N accepted (mamba-ssm's MAX_DSTATE)
MAX_DSTATE = 256
#: target elements of one (channels × N × T) register tile
TILE_ELEMS = 1024
#: longest chunk (tokens per scan tile)
MAX_CHUNK = 64
#: registers per thread ptxas may use: the hardware's limit (left to itself, ptxas caps some of
#: these kernels lower and spills a few bytes to raise occupancy)
MAX_REGISTERS = 255


# ---------------------------------------------------------------------------------------------
# device functions
# ---------------------------------------------------------------------------------------------

#: decorator of the helpers the kernels call: ``triton.jit``; under the interpreter the plain
#: Python function (the interpreter re-patches ``triton.language`` on every call of a jitted
#: helper, which costs more than the helper's work; the body is the same code either way)
_device_fn = (lambda fn: fn) if INTERPRET else triton.jit

@triton.jit
def _combine(a_l, x_l, a_r, x_r):
    """Compose two steps h -> a h + x: the left one first, then the right one."""
    return a_l * a_r, a_r * x_l + x_r


@triton.jit
def _add(a, b):
    return a + b


@_device_fn
def _sum(x, axis: tl.constexpr):
    """Sum over ``axis`` (what ``tl.sum`` does; the kernels use only Triton builtins and this
    module's functions, so that they also run in an interpreter enabled after triton's import)."""
    return tl.reduce(x, axis, _add)


@_device_fn
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@_device_fn
def _reverse(x, i, T: tl.constexpr):
    """x[:, :, ::-1] of a (BE, BN, T) tile (i = arange(T)), by a gather along the last axis (Triton's
    ``reverse=True`` scans are avoided, see the module docstring)."""
    idx = tl.broadcast_to((T - 1 - i)[None, None, :], x.shape)
    return tl.gather(x, idx, 2)


@_device_fn
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}), log1p by its series where its argument is tiny."""
    y = tl.exp(-tl.abs(x))
    lp = tl.where(y < 1e-4, y * (1.0 - 0.5 * y), tl.log(1.0 + y))
    return tl.maximum(x, 0.0) + lp


@_device_fn
def _delta(ptrs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(Δ_raw + bias, Δ) at ``ptrs`` in float32; Δ = 0 where ``mask`` is False (a step that
    leaves the state unchanged)."""
    raw = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    d = raw
    if SOFTPLUS:
        d = _softplus(raw)
    return raw, tl.where(mask, d, 0.0)


@_device_fn
def _load_gated(dy_ptr, z_ptr, offs, mask, HAS_Z: tl.constexpr):
    """(dout, z, g) at ``offs`` in float32: the output gradient, the gate input (0.0 without a
    gate) and the gradient reaching the scan output, g = dout ⊙ SiLU(z) (dout without a gate)."""
    dout = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = dout * zz * _sigmoid(zz)
    else:
        zz = 0.0
        g = dout
    return dout, zz, g


@_device_fn
def _channel_block(E, N, L, BE: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):
    """Index tiles of a program of grid (B, cdiv(E, BE)): batch element pb, channels e (BE,),
    states n (BN,), chunk positions i (T,), their masks, and the offsets of row (b, e, :) (BE, 1),
    row (b, n, :) (BN, 1) and element (b, e, n) (BE, BN)."""
    pb = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    n = tl.arange(0, BN)
    i = tl.arange(0, T)
    em = e < E
    nm = n < N
    en_mask = em[:, None] & nm[None, :]
    row = pb * E * L + e[:, None].to(tl.int64) * L
    nrow = pb * N * L + n[:, None].to(tl.int64) * L
    en_off = (pb * E + e[:, None]) * N + n[None, :]
    return pb, e, n, i, em, nm, en_mask, row, nrow, en_off


@_device_fn
def _channel_params(a_ptr, bias_ptr, dskip_ptr, e, n, N, em, en_mask, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """A (BE, BN), delta_bias (BE, 1) and D (BE, 1) of channels ``e`` in float32 (bias, D: 0.0 when
    absent)."""
    A2 = tl.load(a_ptr + e[:, None] * N + n[None, :], mask=en_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e, mask=em, other=0.0).to(tl.float32)[:, None]
    else:
        bias = 0.0
    if HAS_D:
        dskip = tl.load(dskip_ptr + e, mask=em, other=0.0).to(tl.float32)[:, None]
    else:
        dskip = 0.0
    return A2, bias, dskip


@_device_fn
def _last(x, i, T: tl.constexpr):
    """x[:, :, T-1] of a (BE, BN, T) tile (i = arange(T))."""
    return _sum(tl.where(i[None, None, :] == T - 1, x, 0.0), 2)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _fwd_kernel(u_ptr, d_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr,
                y_ptr, last_ptr, ckpt_ptr,
                E, N, L, NCHUNK,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                SAVE: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):
    """Grid (B, cdiv(E, BE)): y (B, E, L), last state (B, E, N) and, with SAVE, the state entering
    every chunk, ckpt (B, E, NCHUNK, N)."""
    pb, e, n, i, em, nm, en_mask, row, nrow, en_off = _channel_block(E, N, L, BE, BN, T)
    A2, bias, dskip = _channel_params(a_ptr, bias_ptr, dskip_ptr, e, n, N, em, en_mask, HAS_BIAS, HAS_D)
    A3 = A2[:, :, None]
    h = tl.full((BE, BN), 0.0, tl.float32)
    for c in range(NCHUNK):
        t = c * T + i
        tm = t < L
        m = em[:, None] & tm[None, :]
        mn = nm[:, None] & tm[None, :]
        if SAVE:
            ck = ((pb * E + e[:, None]) * NCHUNK + c) * N + n[None, :]
            tl.store(ckpt_ptr + ck, h, mask=en_mask)
        u = tl.load(u_ptr + row + t[None, :], mask=m, other=0.0).to(tl.float32)
        _, d = _delta(d_ptr + row + t[None, :], m, bias, HAS_BIAS, SOFTPLUS)
        bt = tl.load(b_ptr + nrow + t[None, :], mask=mn, other=0.0).to(tl.float32)
        ct = tl.load(c_ptr + nrow + t[None, :], mask=mn, other=0.0).to(tl.float32)
        alpha = tl.exp(d[:, None, :] * A3)
        x = (d * u)[:, None, :] * bt[None, :, :]
        pa, px = tl.associative_scan((alpha, x), 2, _combine)
        hs = px + pa * h[:, :, None]
        y = _sum(hs * ct[None, :, :], 1) + dskip * u
        h = _last(hs, i, T)
        if HAS_Z:
            zz = tl.load(z_ptr + row + t[None, :], mask=m, other=0.0).to(tl.float32)
            y = y * zz * _sigmoid(zz)
        tl.store(y_ptr + row + t[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(last_ptr + en_off, h, mask=en_mask)


@triton.jit
def _bwd_carry_kernel(d_ptr, a_ptr, c_ptr, z_ptr, bias_ptr, dy_ptr, dlast_ptr, lamck_ptr,
                      E, N, L, NCHUNK,
                      HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                      HAS_DLAST: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):
    """Grid (B, cdiv(E, BE)): the adjoint state λ_{(c+1)T} entering chunk c from its right,
    lamck (B, E, NCHUNK, N) (for the last chunk: the gradient of the last state, or 0)."""
    pb, e, n, i, em, nm, en_mask, row, nrow, en_off = _channel_block(E, N, L, BE, BN, T)
    # (D is not read here; the names bound before the loop must keep their type inside it, so `_`
    # -- rebound by the loop -- cannot take the third value)
    A2, bias, no_dskip = _channel_params(a_ptr, bias_ptr, a_ptr, e, n, N, em, en_mask, HAS_BIAS, False)
    A3 = A2[:, :, None]
    if HAS_DLAST:
        lam = tl.load(dlast_ptr + en_off, mask=en_mask, other=0.0).to(tl.float32)
    else:
        lam = tl.full((BE, BN), 0.0, tl.float32)
    for k in range(NCHUNK):
        c = NCHUNK - 1 - k
        ck = ((pb * E + e[:, None]) * NCHUNK + c) * N + n[None, :]
        tl.store(lamck_ptr + ck, lam, mask=en_mask)
        tr = c * T + (T - 1 - i)             # the chunk's tokens, last first
        mr = em[:, None] & (tr < L)[None, :]
        mnext = em[:, None] & (tr + 1 < L)[None, :]
        _, _, g = _load_gated(dy_ptr, z_ptr, row + tr[None, :], mr, HAS_Z)
        _, dnext = _delta(d_ptr + row + tr[None, :] + 1, mnext, bias, HAS_BIAS, SOFTPLUS)
        cr = tl.load(c_ptr + nrow + tr[None, :], mask=nm[:, None] & (tr < L)[None, :], other=0.0).to(tl.float32)
        pa, px = tl.associative_scan((tl.exp(dnext[:, None, :] * A3), cr[None, :, :] * g[:, None, :]), 2,
                                     _combine)
        lam = _last(px + pa * lam[:, :, None], i, T)


@triton.jit
def _bwd_kernel(u_ptr, d_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, dy_ptr, ckpt_ptr, lamck_ptr,
                du_ptr, ddelta_ptr, dz_ptr, db_ptr, dc_ptr, da_part_ptr, dd_part_ptr, dbias_part_ptr,
                E, N, L, NCHUNK,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                BE: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):
    """Grid (B, NCHUNK): every gradient of chunk c of batch element b, all channels.

    du, dΔ (before bias/softplus), dz (B, E, L); dB, dC (B, N, L); partial sums over the chunk's
    tokens of dA (B, NCHUNK, E, N), dD and d delta_bias (B, NCHUNK, E)."""
    pb = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n = tl.arange(0, BN)
    i = tl.arange(0, T)
    nm = n < N
    t = c * T + i                      # the chunk's tokens
    tm = t < L
    tp = t - 1                          # the previous token, inside this chunk
    tpm = (i > 0) & (tp < L)
    tr = c * T + (T - 1 - i)            # the chunk's tokens, last first
    trm = tr < L
    tnm = tr + 1 < L
    nrow = pb * N * L + n[:, None].to(tl.int64) * L
    bt = tl.load(b_ptr + nrow + t[None, :], mask=nm[:, None] & tm[None, :], other=0.0).to(tl.float32)
    bp = tl.load(b_ptr + nrow + tp[None, :], mask=nm[:, None] & tpm[None, :], other=0.0).to(tl.float32)
    ct = tl.load(c_ptr + nrow + t[None, :], mask=nm[:, None] & tm[None, :], other=0.0).to(tl.float32)
    cr = tl.load(c_ptr + nrow + tr[None, :], mask=nm[:, None] & trm[None, :], other=0.0).to(tl.float32)
    db_acc = tl.full((BN, T), 0.0, tl.float32)
    dc_acc = tl.full((BN, T), 0.0, tl.float32)
    for e0 in range(0, E, BE):
        e = e0 + tl.arange(0, BE)
        em = e < E
        en_mask = em[:, None] & nm[None, :]
        A2, bias, dskip = _channel_params(a_ptr, bias_ptr, dskip_ptr, e, n, N, em, en_mask, HAS_BIAS, HAS_D)
        A3 = A2[:, :, None]
        row = pb * E * L + e[:, None].to(tl.int64) * L
        m = em[:, None] & tm[None, :]
        ck = ((pb * E + e[:, None]) * NCHUNK + c) * N + n[None, :]
        # forward states of the chunk: h_{t-1} by a scan over the tokens shifted by one
        u = tl.load(u_ptr + row + t[None, :], mask=m, other=0.0).to(tl.float32)
        raw, d = _delta(d_ptr + row + t[None, :], m, bias, HAS_BIAS, SOFTPLUS)
        mp = em[:, None] & tpm[None, :]
        up = tl.load(u_ptr + row + tp[None, :], mask=mp, other=0.0).to(tl.float32)
        _, dp = _delta(d_ptr + row + tp[None, :], mp, bias, HAS_BIAS, SOFTPLUS)
        h0 = tl.load(ckpt_ptr + ck, mask=en_mask, other=0.0)
        pa, px = tl.associative_scan((tl.exp(dp[:, None, :] * A3), (dp * up)[:, None, :] * bp[None, :, :]), 2,
                                     _combine)
        hprev = px + pa * h0[:, :, None]
        du_ = d * u
        ahp = tl.exp(d[:, None, :] * A3) * hprev                  # α_t h_{t-1}
        h = ahp + du_[:, None, :] * bt[None, :, :]
        # adjoint states: λ_t = C_t g_t + α_{t+1} λ_{t+1}, scanned last token first
        mr = em[:, None] & trm[None, :]
        _, _, g_r = _load_gated(dy_ptr, z_ptr, row + tr[None, :], mr, HAS_Z)
        _, dnext = _delta(d_ptr + row + tr[None, :] + 1, em[:, None] & tnm[None, :], bias, HAS_BIAS, SOFTPLUS)
        lam_in = tl.load(lamck_ptr + ck, mask=en_mask, other=0.0)
        qa, qx = tl.associative_scan((tl.exp(dnext[:, None, :] * A3), cr[None, :, :] * g_r[:, None, :]), 2,
                                     _combine)
        lam = _reverse(qx + qa * lam_in[:, :, None], i, T)       # back to token order
        # gradients
        dout, zz, g = _load_gated(dy_ptr, z_ptr, row + t[None, :], m, HAS_Z)
        dc_acc += _sum(h * g[:, None, :], 0)
        db_acc += _sum(lam * du_[:, None, :], 0)
        s_bc = _sum(lam * bt[None, :, :], 1)                 # Σ_n λ B
        lam_ahp = lam * ahp
        s_da = _sum(lam_ahp * A3, 1)                        # Σ_n λ A α h_{t-1}
        da_part = _sum(lam_ahp * d[:, None, :], 2)          # Σ_t λ Δ α h_{t-1}
        g_du = s_bc * d + dskip * g
        g_dd = s_bc * u + s_da
        if SOFTPLUS:
            g_dd = g_dd * _sigmoid(raw)
        g_dd = tl.where(m, g_dd, 0.0)
        tl.store(du_ptr + row + t[None, :], g_du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + row + t[None, :], g_dd.to(ddelta_ptr.dtype.element_ty), mask=m)
        if HAS_Z:
            ys = _sum(h * ct[None, :, :], 1) + dskip * u
            sz = _sigmoid(zz)
            g_z = dout * ys * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + row + t[None, :], g_z.to(dz_ptr.dtype.element_ty), mask=m)
        part = (pb * NCHUNK + c) * E + e
        tl.store(da_part_ptr + part[:, None] * N + n[None, :], da_part, mask=en_mask)
        tl.store(dd_part_ptr + part, _sum(g * u, 1), mask=em)
        tl.store(dbias_part_ptr + part, _sum(g_dd, 1), mask=em)
    mn = nm[:, None] & tm[None, :]
    tl.store(db_ptr + nrow + t[None, :], db_acc.to(db_ptr.dtype.element_ty), mask=mn)
    tl.store(dc_ptr + nrow + t[None, :], dc_acc.to(dc_ptr.dtype.element_ty), mask=mn)



#: every kernel of this module
KERNELS = (_fwd_kernel, _bwd_carry_kernel, _bwd_kernel)


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------

def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _tiles(e: int, n: int, chunk: int | None, block_e: int | None) -> tuple[int, int, int, int]:
    """(BE, BN, T, BE_bwd): channels per program of the sequential kernels, padded N, tokens per
    chunk, channels per step of the per-chunk backward kernel (all powers of two)."""
    bn = max(2, _pow2(n))
    if INTERPRET:  # the interpreter's cost is per program and loop step, not per element
        t = _pow2(chunk) if chunk else MAX_CHUNK
        be = _pow2(block_e) if block_e else min(_pow2(e), 16)
        return be, bn, max(2, t), be
    t = max(2, _pow2(chunk) if chunk else max(16, min(MAX_CHUNK, TILE_ELEMS // bn)))
    be = _pow2(block_e) if block_e else 1
    be_bwd = _pow2(block_e) if block_e else max(1, min(_pow2(e), TILE_ELEMS // (bn * t)))
    return be, bn, t, be_bwd


def _launch_options(be: int, bn: int, t: int) -> dict:
    """Warps and register limit of a launch with (BE × BN × T) register tiles: 4 warps, or more so
    that a tile is at most 8 elements per thread (8 warps at N 128, 16 at N 256: the backward
    kernel spills with fewer)."""
    return {"num_warps": max(4, min(16, be * bn * t // 256)), "maxnreg": MAX_REGISTERS}


class KernelLaunch(NamedTuple):
    """One launch of a kernel of this module: ``kernel[grid](**args)``; ``args`` names every
    argument, tensors and integers as passed, the ``tl.constexpr`` flags and tile sizes, and the
    launch options (``num_warps``, ``maxnreg``)."""
    kernel: object
    grid: tuple[int, int]
    args: dict


def _run(launches: list[KernelLaunch], device: torch.device) -> None:
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for launch in launches:
            launch.kernel[launch.grid](**launch.args)


def _forward_launch(u, delta, A, B, C, D, z, delta_bias, softplus: bool, tiles, save: bool):
    """The forward kernel's launch and what it writes: y (B, E, L) in u's dtype, the last state
    (B, E, N) and, with ``save``, the chunk-entry states ckpt (B, E, NCHUNK, N) (float32; without
    ``save`` ckpt is the last state's tensor, unused)."""
    bsz, e, length = u.shape
    n = A.shape[1]
    be, bn, t, _ = tiles
    nchunk = max(1, triton.cdiv(length, t))
    y = torch.empty_like(u, memory_format=torch.contiguous_format)
    last = torch.empty(bsz, e, n, device=u.device, dtype=torch.float32)
    ckpt = torch.empty(bsz, e, nchunk, n, device=u.device, dtype=torch.float32) if save else last
    launch = KernelLaunch(_fwd_kernel, (bsz, triton.cdiv(e, be)), dict(
        u_ptr=u, d_ptr=delta, a_ptr=A, b_ptr=B, c_ptr=C, dskip_ptr=_or(D, u), z_ptr=_or(z, u),
        bias_ptr=_or(delta_bias, u), y_ptr=y, last_ptr=last, ckpt_ptr=ckpt, E=e, N=n, L=length, NCHUNK=nchunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        SAVE=save, BE=be, BN=bn, T=t, **_launch_options(be, bn, t)))
    return launch, y, last, ckpt


def _backward_launches(u, delta, A, B, C, D, z, delta_bias, ckpt, gy, glast, softplus: bool, tiles):
    """The two backward kernels' launches (gy (B, E, L) the gradient of y; glast (B, E, N) that of
    the last state, or None) and what they write: du, dΔ, dz (B, E, L) (dz is du's tensor without
    a gate), dB, dC (B, N, L), and the per-(batch, chunk) partial sums dA (B, NCHUNK, E, N),
    dD and d delta_bias (B, NCHUNK, E), float32."""
    bsz, e, length = u.shape
    n = A.shape[1]
    be, bn, t, be_bwd = tiles
    nchunk = ckpt.shape[2]
    dev = u.device
    out = dict(du=torch.empty_like(u, memory_format=torch.contiguous_format),
               ddelta=torch.empty_like(delta, memory_format=torch.contiguous_format),
               dB=torch.empty_like(B, memory_format=torch.contiguous_format),
               dC=torch.empty_like(C, memory_format=torch.contiguous_format),
               da_part=torch.empty(bsz, nchunk, e, n, device=dev, dtype=torch.float32),
               dd_part=torch.empty(bsz, nchunk, e, device=dev, dtype=torch.float32),
               dbias_part=torch.empty(bsz, nchunk, e, device=dev, dtype=torch.float32))
    out["dz"] = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else out["du"]
    lamck = torch.empty_like(ckpt)
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus)
    carry = KernelLaunch(_bwd_carry_kernel, (bsz, triton.cdiv(e, be)), dict(
        d_ptr=delta, a_ptr=A, c_ptr=C, z_ptr=_or(z, u), bias_ptr=_or(delta_bias, u), dy_ptr=gy,
        dlast_ptr=_or(glast, ckpt), lamck_ptr=lamck, E=e, N=n, L=length, NCHUNK=nchunk,
        HAS_DLAST=glast is not None, BE=be, BN=bn, T=t, **flags, **_launch_options(be, bn, t)))
    grads = KernelLaunch(_bwd_kernel, (bsz, nchunk), dict(
        u_ptr=u, d_ptr=delta, a_ptr=A, b_ptr=B, c_ptr=C, dskip_ptr=_or(D, u), z_ptr=_or(z, u),
        bias_ptr=_or(delta_bias, u), dy_ptr=gy, ckpt_ptr=ckpt, lamck_ptr=lamck, du_ptr=out["du"],
        ddelta_ptr=out["ddelta"], dz_ptr=out["dz"], db_ptr=out["dB"], dc_ptr=out["dC"], da_part_ptr=out["da_part"],
        dd_part_ptr=out["dd_part"], dbias_part_ptr=out["dbias_part"], E=e, N=n, L=length, NCHUNK=nchunk,
        HAS_D=D is not None, BE=be_bwd, BN=bn, T=t, **flags, **_launch_options(be_bwd, bn, t)))
    return [carry, grads], out


def _or(t, dummy):
    """``t``, or ``dummy`` (any tensor: an argument the kernel's flags leave unread) for None."""
    return dummy if t is None else t


def kernel_launches(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    requires_grad=True, last_state_grad=False, chunk: int | None = None,
                    block_e: int | None = None) -> list[KernelLaunch]:
    """Every kernel launch that :func:`selective_scan_triton` makes for these inputs, without
    running one: the forward and, with ``requires_grad``, the two backward kernels (with
    ``last_state_grad``, as when the last state's gradient is used too). Outputs are allocated on
    the inputs' device, so with ``meta`` tensors this costs no memory and needs no GPU:
    :mod:`nnunet_ext.bench.triton_compile` derives the kernel specialisations it compiles from it.
    """
    args = [_arg(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
    tiles = _tiles(u.shape[1], A.shape[1], chunk, block_e)
    fwd, y, last, ckpt = _forward_launch(*args, bool(delta_softplus), tiles, requires_grad)
    if not requires_grad:
        return [fwd]
    bwd, _ = _backward_launches(*args, ckpt, torch.empty_like(y), torch.empty_like(last) if last_state_grad else None,
                                bool(delta_softplus), tiles)
    return [fwd, *bwd]


def _arg(t):
    """The tensor, contiguous (None -> None)."""
    return None if t is None else t.contiguous()


class _TritonScan(torch.autograd.Function):
    """forward(u, delta, A, B, C, D, z, delta_bias, softplus, chunk, block_e) -> y (B, E, L) in
    u's dtype, last state (B, E, N) float32."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, chunk, block_e):
        tiles = _tiles(u.shape[1], A.shape[1], chunk, block_e)
        need = any(ctx.needs_input_grad[:8])
        launch, y, last, ckpt = _forward_launch(u, delta, A, B, C, D, z, delta_bias, bool(softplus), tiles, need)
        _run([launch], u.device)
        ctx.set_materialize_grads(False)  # an unused output gets no zero-filled gradient
        if need:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            ctx.cfg = (bool(softplus), tiles)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, glast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        softplus, tiles = ctx.cfg
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        glast = None if glast is None else glast.contiguous()
        launches, out = _backward_launches(u, delta, A, B, C, D, z, delta_bias, ckpt, gy, glast, softplus, tiles)
        _run(launches, u.device)
        need = ctx.needs_input_grad
        dA = out["da_part"].sum((0, 1)).to(A.dtype) if need[2] else None
        dD = out["dd_part"].sum((0, 1)).to(D.dtype) if D is not None and need[5] else None
        dbias = (out["dbias_part"].sum((0, 1)).to(delta_bias.dtype)
                 if delta_bias is not None and need[7] else None)
        return (out["du"] if need[0] else None, out["ddelta"] if need[1] else None, dA,
                out["dB"] if need[3] else None, out["dC"] if need[4] else None, dD,
                out["dz"] if z is not None and need[6] else None, dbias, None, None, None)


def _check(u, delta, A, B, C, D, z, delta_bias):
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    dev = u.device
    for name, t in named.items():
        if t is None:
            continue
        if t.device != dev:
            raise ValueError(f"selective_scan_triton: {name} is on {t.device}, u on {dev}; put every "
                             "argument on one device")
        if t.is_complex():
            raise TypeError(f"selective_scan_triton: complex {name} is not supported")
    if dev.type != "cuda" and not INTERPRET:
        raise ValueError(f"selective_scan_triton runs on CUDA tensors (got {dev.type}); on the CPU only "
                         "under Triton's interpreter (TRITON_INTERPRET=1 set before this module is imported)")
    n = A.shape[1]
    if n > MAX_DSTATE:
        raise ValueError(f"selective_scan_triton: state size N = {n} is above {MAX_DSTATE}; use backend='torch'")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 3:
            raise ValueError(f"selective_scan_triton: {name} must be input-dependent (B, N, L), "
                             f"got {tuple(t.shape)}")


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, chunk: int | None = None, block_e: int | None = None):
    """Selective scan with the Triton kernels; differentiable in every tensor argument.

    Shapes (mamba-ssm convention): u, delta, z (B, E, L); A (E, N); B, C (B, N, L); D, delta_bias
    (E,). Returns y (B, E, L) in u's dtype, and with ``return_last_state`` also the final state
    (B, E, N) in float32 (its gradient is propagated too). ``chunk`` (tokens per scan tile) and
    ``block_e`` (channels per program) override the tiling (powers of two; tests use them).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    args = [_arg(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
    y, last = _TritonScan.apply(*args, bool(delta_softplus), chunk, block_e)
    return (y, last) if return_last_state else y


def self_check(device) -> None:
    """Run forward and backward once on tiny inputs on ``device`` and compare with the sequential
    reference; raises (with the reason) when the kernels fail to compile, run or agree."""
    from nnunet_ext.ops.reference import selective_scan_sequential

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    L = MAX_CHUNK + 5  # two chunks of the default tiling (the kernels compiled here serve later calls)
    inputs = dict(u=r(1, 2, L), delta=r(1, 2, L), A=-torch.rand(2, 3, generator=g) - 0.5, B=r(1, 3, L),
                  C=r(1, 3, L), D=r(2), z=r(1, 2, L), delta_bias=r(2) * 0.1)
    reference_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    leaves = {k: v.to(device).requires_grad_() for k, v in inputs.items()}
    y = selective_scan_triton(**leaves, delta_softplus=True)
    y_reference = selective_scan_sequential(**reference_leaves, delta_softplus=True)
    y.sum().backward()
    y_reference.sum().backward()
    pairs = [("y", y, y_reference)] + [(f"d{k}", leaves[k].grad, reference_leaves[k].grad) for k in inputs]
    for name, ours, reference in pairs:
        if ours is None or not torch.allclose(ours.detach().cpu(), reference.detach(), rtol=1e-3, atol=1e-4):
            raise RuntimeError(f"the Triton scan's {name} differs from the sequential reference on {device}")
