"""numba kernels of the fused CPU selective scan (imported lazily by :mod:`nnunet_ext.ops.scan_fused`).

This module imports numba at import time; nothing else in the package imports it eagerly.
All arrays are C-contiguous float32 numpy arrays; the input-dependent B and C come token-major,
``(B, L, N)``, so the N-vector of one token is contiguous.

Notation (one batch element b, one channel e, one token t, one state n)::

    x_t   = delta[b, e, t] + bias[e];   d_t = softplus(x_t) if requested else x_t
    a_tn  = exp(d_t * A[e, n])
    h_tn  = a_tn * h_(t-1)n + d_t * u_t * B[b, t, n]
    y_t   = sum_n C[b, t, n] * h_tn + D[e] * u_t
    out_t = y_t * silu(z_t)                      (if z is given)

Speed notes (measured on 2 cores, AVX-512, no SVML): libm's ``expf`` and ``log1pf`` are scalar
calls that keep LLVM from vectorising the loop over the N states, so the kernels use the
vectorisable float32 ``_exp`` / ``_softplus`` below (within ~1e-7 relative of libm; NaN
propagates); softplus is evaluated for a whole chunk of tokens at once; sums over N use eight
partial sums (no ``fastmath``: the order is fixed, so results are reproducible); and
``error_model='numpy'`` drops Python's zero-division checks, which also block vectorisation.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

_F32 = np.float32
_I32 = np.int32

_OPTS = dict(fastmath=False, error_model="numpy", nogil=True)
_INLINE = dict(inline="always", error_model="numpy")

_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**9
_LN2_LO = _F32(-2.12194440e-4)
_SOFTPLUS_THRESHOLD = _F32(20.0)  # torch.nn.functional.softplus's default: above it softplus(x) = x


@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _f32_as_i32(typingctx, x):
    """Reinterpret the bits of a float32 as an int32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@numba.njit(**_INLINE)
def _exp(x):
    """float32 exp(x): 2**k * p(r) with x = k ln2 + r, |r| <= ln2 / 2, p the degree-7 Taylor polynomial.

    Within ~1e-7 relative of libm on [-87, 88]; 0 below -87 (libm returns denormals there,
    < 1.7e-38), inf above 88 (exp(88) = 1.65e38, float32 overflows at 88.72), NaN for NaN.
    """
    xc = min(max(x, _F32(-87.0)), _F32(88.0))
    kf = np.floor(xc * _LOG2E + _F32(0.5))
    r = (xc - kf * _LN2_HI) - kf * _LN2_LO
    p = _F32(1.0 / 5040.0)
    p = p * r + _F32(1.0 / 720.0)
    p = p * r + _F32(1.0 / 120.0)
    p = p * r + _F32(1.0 / 24.0)
    p = p * r + _F32(1.0 / 6.0)
    p = p * r + _F32(0.5)
    p = p * r + _F32(1.0)
    p = p * r + _F32(1.0)
    res = p * _i32_as_f32((_I32(kf) + _I32(127)) << _I32(23))
    if x < _F32(-87.0):
        res = _F32(0.0)
    if x > _F32(88.0):
        res = _F32(np.inf)
    if x != x:
        res = x
    return res


@numba.njit(**_INLINE)
def _log(x):
    """float32 log(x) for positive, finite, normal x: k ln2 + 2 atanh((m - 1) / (m + 1)), m in [0.707, 1.414]."""
    bits = _f32_as_i32(x)
    k = ((bits >> _I32(23)) & _I32(255)) - _I32(127)
    m = _i32_as_f32((bits & _I32(0x7FFFFF)) | _I32(0x3F800000))
    if m > _F32(1.4142135):
        m = m * _F32(0.5)
        k = k + _I32(1)
    s = (m - _F32(1.0)) / (m + _F32(1.0))
    s2 = s * s
    p = _F32(1.0 / 11.0)
    p = p * s2 + _F32(1.0 / 9.0)
    p = p * s2 + _F32(1.0 / 7.0)
    p = p * s2 + _F32(1.0 / 5.0)
    p = p * s2 + _F32(1.0 / 3.0)
    p = p * s2 + _F32(1.0)
    kf = _F32(k)
    return kf * _LN2_HI + (kf * _LN2_LO + _F32(2.0) * s * p)


@numba.njit(**_INLINE)
def _softplus(x):
    """float32 log(1 + exp(x)) as torch computes it (x above 20 passes through)."""
    e = _exp(x)
    w = _F32(1.0) + e
    # log1p(e) = log(w) * e / (w - 1): exact rounding compensation (w - 1 is computed exactly)
    r = _log(w) * (e / (w - _F32(1.0)))
    if x < _F32(-16.0):  # log1p(e) = e within 6e-8 relative; avoids w == 1
        r = e
    if x > _SOFTPLUS_THRESHOLD:
        r = x
    if x != x:
        r = x
    return r


@numba.njit(**_INLINE)
def _sigmoid(x):
    return _F32(1.0) / (_F32(1.0) + _exp(-x))


@numba.njit(**_INLINE)
def _dot(x, y, n):
    """sum_i x[i] * y[i] over the first n elements of two 1-D arrays, with eight partial sums."""
    p0 = _F32(0.0)
    p1 = _F32(0.0)
    p2 = _F32(0.0)
    p3 = _F32(0.0)
    p4 = _F32(0.0)
    p5 = _F32(0.0)
    p6 = _F32(0.0)
    p7 = _F32(0.0)
    n8 = n - n % 8
    for i in range(0, n8, 8):
        p0 += x[i] * y[i]
        p1 += x[i + 1] * y[i + 1]
        p2 += x[i + 2] * y[i + 2]
        p3 += x[i + 3] * y[i + 3]
        p4 += x[i + 4] * y[i + 4]
        p5 += x[i + 5] * y[i + 5]
        p6 += x[i + 6] * y[i + 6]
        p7 += x[i + 7] * y[i + 7]
    s = ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))
    for i in range(n8, n):
        s += x[i] * y[i]
    return s


@numba.njit(**_INLINE)
def _sum(x, n):
    """sum_i x[i] over the first n elements of a 1-D array, with eight partial sums."""
    p0 = _F32(0.0)
    p1 = _F32(0.0)
    p2 = _F32(0.0)
    p3 = _F32(0.0)
    p4 = _F32(0.0)
    p5 = _F32(0.0)
    p6 = _F32(0.0)
    p7 = _F32(0.0)
    n8 = n - n % 8
    for i in range(0, n8, 8):
        p0 += x[i]
        p1 += x[i + 1]
        p2 += x[i + 2]
        p3 += x[i + 3]
        p4 += x[i + 4]
        p5 += x[i + 5]
        p6 += x[i + 6]
        p7 += x[i + 7]
    s = ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))
    for i in range(n8, n):
        s += x[i]
    return s


def _scan_forward(u, delta, A, Bt, Ct, D, z, bias, softplus, has_z, save_ckpt, T, out, last, ckpt):
    """Forward scan, parallel over (b, e), sequential over L in chunks of T tokens.

    u, delta (B, E, L); A (E, N); Bt, Ct (B, L, N); D, bias (E,); z (B, E, L) or a dummy
    (1, 1, 1) when ``has_z`` is False. Writes out (B, E, L), last (B, E, N) and, when
    ``save_ckpt``, the state entering chunk c (tokens c*T ... c*T + T - 1) into ckpt[b, e, c]
    (ckpt is (B, E, ceil(L / T), N); chunk 0 gets zeros).
    """
    nb, ne, L = u.shape
    N = A.shape[1]
    nchunks = (L + T - 1) // T
    for item in prange(nb * ne):
        b = item // ne
        e = item - b * ne
        h = np.zeros(N, dtype=_F32)
        ds = np.empty(T, dtype=_F32)
        dus = np.empty(T, dtype=_F32)
        Ae = A[e]
        De = D[e]
        be = bias[e]
        for c in range(nchunks):
            t0 = c * T
            m = min(T, L - t0)
            if save_ckpt:
                for n in range(N):
                    ckpt[b, e, c, n] = h[n]
            for k in range(m):
                x = delta[b, e, t0 + k] + be
                d = _softplus(x) if softplus else x
                ds[k] = d
                dus[k] = d * u[b, e, t0 + k]
            for k in range(m):
                t = t0 + k
                d = ds[k]
                du = dus[k]
                Bv = Bt[b, t]
                for n in range(N):
                    h[n] = _exp(d * Ae[n]) * h[n] + du * Bv[n]
                out[b, e, t] = _dot(h, Ct[b, t], N) + De * u[b, e, t]
            if has_z:
                for k in range(m):
                    zt = z[b, e, t0 + k]
                    out[b, e, t0 + k] *= zt * _sigmoid(zt)
        for n in range(N):
            last[b, e, n] = h[n]


def _scan_backward(u, delta, A, Bt, Ct, D, z, bias, softplus, has_z, T, G, dout, dlast, has_dlast, ckpt,
                   du, ddelta, dz, dA_part, dBt_part, dCt_part, dD_part, dbias_part):
    """Backward scan: chunks in reverse, each chunk's states recomputed from its checkpoint.

    Inputs as for :func:`_scan_forward`, plus dout (B, E, L), the gradient of out, and dlast
    (B, E, N), the gradient of the last state (read only when ``has_dlast``; else a dummy).
    Work items are (b, g), g one of G contiguous groups of channels; an item visits the chunks in
    reverse and, inside each chunk, all its channels (so the chunk's rows of B, C and of the dB, dC
    partial sums stay in cache). Item (b, g) owns dBt_part[b, g] and dCt_part[b, g] ((B, G, L, N),
    zero on entry: its partial sums over its channels, reduced over g by the caller) and writes
    only its own channels' rows of du, ddelta, dz (B, E, L), dA_part (B, E, N), dD_part and
    dbias_part (B, E): no two items write the same element.

    Adjoint: lam_t = dL/dh_t = carry_t + gy_t C_t with carry_t = a_(t+1) lam_(t+1), gy = dL/dy.
    Then dL/d(d_t A_n) = lam_tn h_(t-1)n a_tn, dB_tn = lam_tn d_t u_t, dC_tn = gy_t h_tn,
    du_t = gy_t D + d_t sum_n lam_tn B_tn, dd_t = sum_n (dL/d(d_t A_n) A_n + lam_tn B_tn u_t).
    """
    nb, ne, L = u.shape
    N = A.shape[1]
    nchunks = (L + T - 1) // T
    for item in prange(nb * G):
        b = item // G
        g = item - b * G
        e0 = (g * ne) // G
        e1 = ((g + 1) * ne) // G
        ng = e1 - e0
        ds = np.empty(T, dtype=_F32)  # d_t
        dus = np.empty(T, dtype=_F32)  # d_t u_t
        sig = np.empty(T, dtype=_F32)  # d d_t / d x_t
        gy = np.empty(T, dtype=_F32)  # dL / dy_t (before the gate)
        a = np.empty((T, N), dtype=_F32)  # exp(d_t A)
        hs = np.empty((T + 1, N), dtype=_F32)  # h_(t0 - 1) ... h_(t0 + m - 1)
        lam = np.empty((T, N), dtype=_F32)
        dAc = np.empty(N, dtype=_F32)  # dA summed over one chunk
        w1 = np.empty(N, dtype=_F32)
        w2 = np.empty(N, dtype=_F32)
        carry = np.empty((ng, N), dtype=_F32)  # per channel of the group: a_(t0+T) lam_(t0+T)
        dA_acc = np.zeros((ng, N), dtype=np.float64)
        dD_acc = np.zeros(ng, dtype=np.float64)
        dbias_acc = np.zeros(ng, dtype=np.float64)
        for j in range(ng):
            for n in range(N):
                carry[j, n] = dlast[b, e0 + j, n] if has_dlast else _F32(0.0)
        for c in range(nchunks - 1, -1, -1):
            t0 = c * T
            m = min(T, L - t0)
            for j in range(ng):
                e = e0 + j
                Ae = A[e]
                De = D[e]
                be = bias[e]
                cj = carry[j]
                # 1. delta after bias / softplus, and the softplus derivative
                for k in range(m):
                    x = delta[b, e, t0 + k] + be
                    if softplus:
                        d = _softplus(x)
                        s = _sigmoid(x)
                        if x > _SOFTPLUS_THRESHOLD:
                            s = _F32(1.0)
                    else:
                        d = x
                        s = _F32(1.0)
                    ds[k] = d
                    sig[k] = s
                    dus[k] = d * u[b, e, t0 + k]
                # 2. recompute the chunk's decays and states from its checkpoint
                for k in range(m):
                    d = ds[k]
                    for n in range(N):
                        a[k, n] = _exp(d * Ae[n])
                for n in range(N):
                    hs[0, n] = ckpt[b, e, c, n]
                for k in range(m):
                    Bv = Bt[b, t0 + k]
                    duk = dus[k]
                    for n in range(N):
                        hs[k + 1, n] = a[k, n] * hs[k, n] + duk * Bv[n]
                # 3. through the gate
                if has_z:
                    for k in range(m):
                        t = t0 + k
                        y = _dot(hs[k + 1], Ct[b, t], N) + De * u[b, e, t]
                        zt = z[b, e, t]
                        sz = _sigmoid(zt)
                        go = dout[b, e, t]
                        dz[b, e, t] = go * y * sz * (_F32(1.0) + zt * (_F32(1.0) - sz))
                        gy[k] = go * zt * sz
                else:
                    for k in range(m):
                        gy[k] = dout[b, e, t0 + k]
                # 4. adjoint recurrence, backwards through the chunk
                for k in range(m - 1, -1, -1):
                    Cv = Ct[b, t0 + k]
                    gk = gy[k]
                    for n in range(N):
                        lk = cj[n] + gk * Cv[n]
                        lam[k, n] = lk
                        cj[n] = lk * a[k, n]
                # 5. gradients of the chunk's tokens
                dAc[:] = _F32(0.0)
                dD_c = _F32(0.0)
                dbias_c = _F32(0.0)
                for k in range(m):
                    t = t0 + k
                    ut = u[b, e, t]
                    gk = gy[k]
                    dk = ds[k]
                    duk = dus[k]
                    Bv = Bt[b, t]
                    dBv = dBt_part[b, g, t]
                    dCv = dCt_part[b, g, t]
                    for n in range(N):
                        lk = lam[k, n]
                        dCv[n] += gk * hs[k + 1, n]
                        dBv[n] += lk * duk
                        da = lk * hs[k, n] * a[k, n]
                        dAc[n] += da * dk
                        w1[n] = da * Ae[n]
                        w2[n] = lk * Bv[n]
                    s_lb = _sum(w2, N)
                    dd = _sum(w1, N) + ut * s_lb
                    dx = dd * sig[k]
                    ddelta[b, e, t] = dx
                    du[b, e, t] = gk * De + dk * s_lb
                    dbias_c += dx
                    dD_c += gk * ut
                for n in range(N):
                    dA_acc[j, n] += dAc[n]
                dD_acc[j] += dD_c
                dbias_acc[j] += dbias_c
        for j in range(ng):
            for n in range(N):
                dA_part[b, e0 + j, n] = dA_acc[j, n]
            dD_part[b, e0 + j] = dD_acc[j]
            dbias_part[b, e0 + j] = dbias_acc[j]


def _compile(fn, cache):
    return numba.njit(parallel=True, cache=cache, **_OPTS)(fn)


def build(cache=True):
    """Return ``(forward, backward)`` dispatchers; without a disk cache if no cache directory is usable."""
    if cache:
        try:
            return _compile(_scan_forward, True), _compile(_scan_backward, True)
        except Exception:  # noqa: BLE001 -- "cannot cache function ...: no locator available for file"
            pass
    return _compile(_scan_forward, False), _compile(_scan_backward, False)


__all__ = ["build"]
