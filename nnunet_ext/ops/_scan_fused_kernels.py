"""numba kernels of the fused CPU selective scan (imported lazily by :mod:`nnunet_ext.ops.scan_fused`).

This module imports numba at import time; nothing else in the package imports it eagerly.
All arrays are C-contiguous float32 numpy arrays. The state axis is padded to ``Np``, a multiple
of the vector width :data:`W` (16 float32 lanes): A (E, Np) (the forward takes A transposed,
(N, Ep), channels padded to a multiple of W) and the token-major B, C (B, L, Np) carry zeros
there (a padded lane has decay exp(0) = 1, input 0, state 0 and adjoint 0, so it changes
nothing), and the N-vector of one token is contiguous.

Notation (one batch element b, one channel e, one token t, one state n)::

    x_t   = delta[b, e, t] + bias[e];   d_t = softplus(x_t) if requested else x_t
    a_tn  = exp(d_t * A[e, n])
    h_tn  = a_tn * h_(t-1)n + d_t * u_t * B[b, t, n]
    y_t   = sum_n C[b, t, n] * h_tn + D[e] * u_t
    out_t = y_t * silu(z_t)                      (if z is given)

Vectorisation. LLVM's auto-vectoriser does not vectorise the loops over N reliably here (N = 16 is
too short for its interleaved loops, and with the many arrays of the backward it gives up on the
run-time alias checks), so the kernels are written with an explicit ``float32 x W`` vector type
(an LLVM ``<16 x float>``; lowered to two AVX2 or one AVX-512 register): :func:`vload`,
:func:`vstore`, :func:`vfma`, :func:`vhsum` ... and vector ``exp`` / ``log`` / ``softplus`` /
``sigmoid`` (a degree-7 polynomial after range reduction, within ~1e-7 relative of libm; NaN
propagates). The per-token work (softplus, its derivative, the SiLU gate) is done W tokens at a
time on chunk buffers. No ``fastmath``; fused multiply-adds are explicit. Every sum has a fixed
order (the horizontal sum is a fixed tree over the lanes), so results do not depend on threads.

Layouts. The forward puts W channels in the lanes (work item = batch element x group of W
channels; the state is N vectors, y_t a chain of N vector FMAs, no horizontal sum). The backward
puts W states in the lanes (work item = batch element x group of channels, state and adjoint one
vector per W states), because its dB, dC sums run over channels and must not need a reduction
across lanes per (t, n).

Work per state update (one (b, e, t, n)); "loads" / "stores" count float32 elements moved to or
from arrays (a vector op moves W elements, W updates), "per token" work is shared by N updates::

    before (scalar per-token code; the backward's N loops did not vectorise, no FMA):
      forward   1 exp;  loads 4 (h, A, B, C), stores 1 (h)
                per token: softplus (1 exp + 1 log), sigmoid(z) (1 exp), an N-term dot for y
      backward  1 exp;  loads 20 (a x3, h x4, A x2, B x2, C x2, lam, carry, dB, dC, dAc, w1, w2),
                stores 9 (a, h, lam, carry, dB, dC, dAc, w1, w2)
                per token: softplus (1 exp + 1 log), sigmoid(x), sigmoid(z) (1 exp each),
                an N-term dot for y (gate) and two N-term sums
    after (W lanes per instruction, explicit FMAs):
      forward   1 exp;  loads 2 (A, h; an L1-resident N x W block) + B, C broadcast (2 / W),
                stores 1 (h)
                per token: softplus, sigmoid(z), vectorised over W channels
      backward  1 exp (recompute; exp(d_t A) is kept for the chunk, T x W, and reused by the
                reverse pass); loads 8 (B x2, C, a, h x2, dB, dC), stores 4 (a, h, dB, dC);
                the adjoint carry and dA stay in registers
                per token: softplus, sigmoid(x), sigmoid(z) vectorised over W tokens; two W-lane
                horizontal sums; y for the gate's derivative is saved by the forward (B, E, L)
                instead of recomputed
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

_F32 = np.float32

#: vector width (float32 lanes) of the kernels; the state axis is padded to a multiple of it
W = 16

_OPTS = dict(fastmath=False, error_model="numpy", nogil=True, boundscheck=False)

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**9
_LN2_LO = -2.12194440e-4
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default: above it softplus(x) = x

_f32 = ir.FloatType()
_i32 = ir.IntType(32)
_vty = ir.VectorType(_f32, W)
_ivty = ir.VectorType(_i32, W)
_bvty = ir.VectorType(ir.IntType(1), W)


class Float32xW(types.Type):
    """numba type of a W-lane float32 vector (an LLVM ``<W x float>`` value)."""

    def __init__(self):
        super().__init__(name=f"float32x{W}")


float32xW = Float32xW()


@register_model(Float32xW)
class _Float32xWModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _vty)


# ------------------------------------------------------------------------------ LLVM IR helpers
def _splat(builder, x, vty=_vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(_ivty, [0] * W))


def _c(x):
    return ir.Constant(_vty, [float(np.float32(x))] * W)


def _ci(x):
    return ir.Constant(_ivty, [int(x)] * W)


def _vintr(builder, name, *args):
    """Call the LLVM vector intrinsic ``name`` (e.g. llvm.fma) on <W x float> arguments."""
    fnty = ir.FunctionType(_vty, [_vty] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"{name}.v{W}f32")
    return builder.call(fn, list(args))


def _fma(builder, a, b, c):
    return _vintr(builder, "llvm.fma", a, b, c)


def _ir_exp(builder, x):
    """exp(x): 2**k * p(r), x = k ln2 + r, |r| <= ln2 / 2, p the degree-7 Taylor polynomial.

    0 below -87 (libm gives denormals < 1.7e-38 there), inf above 88, NaN for NaN.
    """
    xc = _vintr(builder, "llvm.minnum", _vintr(builder, "llvm.maxnum", x, _c(-87.0)), _c(88.0))
    kf = _vintr(builder, "llvm.floor", _fma(builder, xc, _c(_LOG2E), _c(0.5)))
    r = _fma(builder, kf, _c(-_LN2_LO), _fma(builder, kf, _c(-_LN2_HI), xc))
    p = _c(1.0 / 5040.0)
    for coef in (1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        p = _fma(builder, p, r, _c(coef))
    ki = builder.fptosi(kf, _ivty)
    scale = builder.bitcast(builder.shl(builder.add(ki, _ci(127)), _ci(23)), _vty)
    res = builder.fmul(p, scale)
    res = builder.select(builder.fcmp_ordered("<", x, _c(-87.0)), _c(0.0), res)
    res = builder.select(builder.fcmp_ordered(">", x, _c(88.0)), _c(np.inf), res)
    return builder.select(builder.fcmp_unordered("uno", x, x), x, res)


def _ir_log(builder, x):
    """log(x) for positive, finite, normal x: k ln2 + 2 atanh((m - 1) / (m + 1)), m in [0.707, 1.414]."""
    bits = builder.bitcast(x, _ivty)
    k = builder.sub(builder.and_(builder.ashr(bits, _ci(23)), _ci(255)), _ci(127))
    m = builder.bitcast(builder.or_(builder.and_(bits, _ci(0x7FFFFF)), _ci(0x3F800000)), _vty)
    big = builder.fcmp_ordered(">", m, _c(1.4142135))
    m = builder.select(big, builder.fmul(m, _c(0.5)), m)
    k = builder.select(big, builder.add(k, _ci(1)), k)
    s = builder.fdiv(builder.fsub(m, _c(1.0)), builder.fadd(m, _c(1.0)))
    s2 = builder.fmul(s, s)
    p = _c(1.0 / 11.0)
    for coef in (1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0):
        p = _fma(builder, p, s2, _c(coef))
    kf = builder.sitofp(k, _vty)
    return _fma(builder, kf, _c(_LN2_HI), _fma(builder, kf, _c(_LN2_LO), builder.fmul(builder.fmul(_c(2.0), s), p)))


def _ir_softplus(builder, x):
    """log(1 + exp(x)) as torch computes it (x above 20 passes through); NaN propagates."""
    e = _ir_exp(builder, x)
    w = builder.fadd(_c(1.0), e)
    # log1p(e) = log(w) * e / (w - 1): exact rounding compensation (w - 1 is computed exactly)
    r = builder.fmul(_ir_log(builder, w), builder.fdiv(e, builder.fsub(w, _c(1.0))))
    r = builder.select(builder.fcmp_ordered("<", x, _c(-16.0)), e, r)  # log1p(e) = e within 6e-8
    r = builder.select(builder.fcmp_ordered(">", x, _c(_SOFTPLUS_THRESHOLD)), x, r)
    return builder.select(builder.fcmp_unordered("uno", x, x), x, r)


def _ir_sigmoid(builder, x):
    return builder.fdiv(_c(1.0), builder.fadd(_c(1.0), _ir_exp(builder, builder.fsub(_c(0.0), x))))


# ------------------------------------------------------------------------------ vector intrinsics
def _is_f32_array(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"


def _elem_ptr(context, builder, arrty, arr, idxty, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(data, [i]), _vty.as_pointer())


@intrinsic
def vload(typingctx, arr, idx):
    """W consecutive float32 of a C-contiguous array from flat element index ``idx`` (no bounds check)."""
    if not (_is_f32_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1]), align=4)

    return float32xW(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """Store vector ``v`` to W consecutive float32 of a C-contiguous array from flat index ``idx``."""
    if not (_is_f32_array(arr) and isinstance(idx, types.Integer) and v == float32xW):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """All W lanes = float32(x)."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32))

    return float32xW(x), codegen


def _binary(op):
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == float32xW and b == float32xW):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return float32xW(a, b), codegen

    return fn


vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, one rounding."""
    if not (a == b == c == float32xW):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)

    return float32xW(a, b, c), codegen


def _unary(emit):
    @intrinsic
    def fn(typingctx, x):
        if x != float32xW:
            return None

        def codegen(context, builder, sig, args):
            return emit(builder, args[0])

        return float32xW(x), codegen

    return fn


vexp = _unary(_ir_exp)
vsoftplus = _unary(_ir_softplus)
vsigmoid = _unary(_ir_sigmoid)


@intrinsic
def vhsum(typingctx, v):
    """Sum of the W lanes in a fixed tree order: lanes i and i + W/2 first, and so on."""
    if v != float32xW:
        return None

    def codegen(context, builder, sig, args):
        s = args[0]
        half = W // 2
        while half >= 1:
            mask = ir.Constant(_ivty, [i + half if i < half else i for i in range(W)])
            s = builder.fadd(s, builder.shuffle_vector(s, ir.Constant(_vty, ir.Undefined), mask))
            half //= 2
        return builder.extract_element(s, ir.Constant(_i32, 0))

    return types.float32(v), codegen


# ------------------------------------------------------------------------------ kernels
def _scan_forward(u, delta, At, Bt, Ct, D, z, bias, softplus, has_z, save_ckpt, save_y, T, out, last, ckpt,
                  ysave):
    """Forward scan, parallel over (b, group of W channels), sequential over L in chunks of T tokens.

    The W channels of a group are the W lanes of the vectors (so the sum over N of y is a chain of
    vector FMAs, no horizontal sum); the state is N vectors. u, delta (B, E, L); At (N, Ep): A
    transposed, channels zero-padded to Ep, a multiple of W; Bt, Ct (B, L, Np); D, bias (E,); z
    (B, E, L) or a dummy (1, 1, 1) when ``has_z`` is False. Writes out (B, E, L), last (B, E, Np);
    when ``save_ckpt``, the state entering chunk c (tokens c*T ... c*T + T - 1) into ckpt[b, e, c]
    (ckpt is (B, E, ceil(L / T), Np); chunk 0 gets zeros, padded states zeros); when ``save_y``,
    the pre-gate y into ysave (B, E, L).
    """
    nb, ne, L = u.shape
    N = At.shape[0]
    Ep = At.shape[1]
    Np = Bt.shape[2]
    ngroups = Ep // W
    nchunks = (L + T - 1) // T
    for item in prange(nb * ngroups):
        b = item // ngroups
        e0 = (item - b * ngroups) * W
        nl = min(W, ne - e0)  # live lanes
        hs = np.zeros(N * W, dtype=_F32)  # the state: hs[n * W + j] = h of channel e0 + j, state n
        xb = np.zeros(T * W, dtype=_F32)  # per token k, lanes j: delta + bias, then d
        ub = np.zeros(T * W, dtype=_F32)  # u
        dub = np.zeros(T * W, dtype=_F32)  # d * u
        yb = np.zeros(T * W, dtype=_F32)
        lane = np.zeros(W, dtype=_F32)
        for j in range(nl):
            lane[j] = D[e0 + j]
        Dv = vload(lane, 0)
        for j in range(nl):
            lane[j] = bias[e0 + j]
        biasv = vload(lane, 0)
        for c in range(nchunks):
            t0 = c * T
            m = min(T, L - t0)
            if save_ckpt:
                for j in range(nl):
                    for n in range(N):
                        ckpt[b, e0 + j, c, n] = hs[n * W + j]
                    for n in range(N, Np):
                        ckpt[b, e0 + j, c, n] = _F32(0.0)
            for j in range(nl):  # (channels, tokens) -> (tokens, lanes)
                for k in range(m):
                    xb[k * W + j] = delta[b, e0 + j, t0 + k]
                    ub[k * W + j] = u[b, e0 + j, t0 + k]
            for k in range(m):
                x = vadd(vload(xb, k * W), biasv)
                d = vsoftplus(x) if softplus else x
                vstore(xb, k * W, d)
                vstore(dub, k * W, vmul(d, vload(ub, k * W)))
            for k in range(m):
                dv = vload(xb, k * W)
                duv = vload(dub, k * W)
                t = t0 + k
                y = vmul(Dv, vload(ub, k * W))
                for n in range(N):
                    a = vexp(vmul(dv, vload(At, n * Ep + e0)))
                    h = vfma(a, vload(hs, n * W), vmul(duv, vsplat(Bt[b, t, n])))
                    vstore(hs, n * W, h)
                    y = vfma(vsplat(Ct[b, t, n]), h, y)
                vstore(yb, k * W, y)
            if save_y:
                for j in range(nl):
                    for k in range(m):
                        ysave[b, e0 + j, t0 + k] = yb[k * W + j]
            if has_z:
                for j in range(nl):
                    for k in range(m):
                        ub[k * W + j] = z[b, e0 + j, t0 + k]
                for k in range(m):
                    zv = vload(ub, k * W)
                    vstore(yb, k * W, vmul(vload(yb, k * W), vmul(zv, vsigmoid(zv))))
            for j in range(nl):
                for k in range(m):
                    out[b, e0 + j, t0 + k] = yb[k * W + j]
        for j in range(nl):
            for n in range(N):
                last[b, e0 + j, n] = hs[n * W + j]
            for n in range(N, Np):
                last[b, e0 + j, n] = _F32(0.0)


def _scan_backward(u, delta, A, Bt, Ct, D, z, bias, softplus, has_z, T, G, dout, dlast, has_dlast, ckpt,
                   ysave, du, ddelta, dz, dA_part, dBt_part, dCt_part, dD_part, dbias_part):
    """Backward scan: chunks in reverse, each chunk's states recomputed from its checkpoint.

    Inputs as for :func:`_scan_forward`, plus dout (B, E, L), the gradient of out; dlast
    (B, E, Np), the gradient of the last state (read only when ``has_dlast``; else a dummy); ysave
    (B, E, L), the pre-gate y (read only when ``has_z``). Work items are (b, g), g one of G
    contiguous groups of channels (G does not depend on the thread count); an item visits the
    chunks in reverse and, inside each chunk, all its channels (so the chunk's rows of B, C and of
    the dB, dC partial sums stay in cache). Item (b, g) owns dBt_part[b, g] and dCt_part[b, g]
    ((B, G, L, Np), zero on entry: its partial sums over its channels, reduced over g by the caller
    in a fixed order) and writes only its own channels' rows of du, ddelta, dz (B, E, L), dA_part
    (B, E, Np), dD_part and dbias_part (B, E): no two items write the same element.

    Adjoint: lam_t = dL/dh_t = carry_t + gy_t C_t with carry_t = a_(t+1) lam_(t+1), gy = dL/dy.
    Then q_tn = dL/d(d_t A_n) = lam_tn h_(t-1)n a_tn, dA_n = sum_t q_tn d_t, dB_tn = lam_tn d_t u_t,
    dC_tn = gy_t h_tn, du_t = gy_t D + d_t s1_t, dd_t = s2_t with s1_t = sum_n lam_tn B_tn and
    s2_t = sum_n (q_tn A_n + u_t lam_tn B_tn); d delta_t = dd_t * softplus'(x_t).
    """
    nb, ne, L = u.shape
    Np = A.shape[1]
    NV = Np // W
    nchunks = (L + T - 1) // T
    Tp = ((T + W - 1) // W) * W
    for item in prange(nb * G):
        b = item // G
        g = item - b * G
        e0 = (g * ne) // G
        e1 = ((g + 1) * ne) // G
        ng = e1 - e0
        xb = np.zeros(Tp, dtype=_F32)  # delta + bias, then d_t
        ub = np.zeros(Tp, dtype=_F32)  # u_t
        dub = np.zeros(Tp, dtype=_F32)  # d_t u_t
        sg = np.zeros(Tp, dtype=_F32)  # d d_t / d x_t
        gy = np.zeros(Tp, dtype=_F32)  # dL / dy_t (before the gate)
        zb = np.zeros(Tp, dtype=_F32)
        yb = np.zeros(Tp, dtype=_F32)
        s1 = np.zeros(Tp, dtype=_F32)
        s2 = np.zeros(Tp, dtype=_F32)
        ab = np.empty(T * W, dtype=_F32)  # exp(d_t A) of one W-lane slice of the chunk
        hb = np.empty((T + 1) * W, dtype=_F32)  # h_(t0 - 1) ... h_(t0 + m - 1) of that slice
        tmp = np.empty(W, dtype=_F32)
        carry = np.empty(ng * Np, dtype=_F32)  # per channel of the group: a_(t0+T) lam_(t0+T)
        dA_acc = np.zeros((ng, Np), dtype=np.float64)
        dD_acc = np.zeros(ng, dtype=np.float64)
        dbias_acc = np.zeros(ng, dtype=np.float64)
        for j in range(ng):
            for n in range(Np):
                carry[j * Np + n] = dlast[b, e0 + j, n] if has_dlast else _F32(0.0)
        for c in range(nchunks - 1, -1, -1):
            t0 = c * T
            m = min(T, L - t0)
            mv = (m + W - 1) // W
            for j in range(ng):
                e = e0 + j
                De = D[e]
                be = bias[e]
                # 1. per-token scalars, W tokens at a time
                for k in range(m):
                    xb[k] = delta[b, e, t0 + k] + be
                    ub[k] = u[b, e, t0 + k]
                    gy[k] = dout[b, e, t0 + k]
                    s1[k] = _F32(0.0)
                    s2[k] = _F32(0.0)
                if has_z:
                    for k in range(m):
                        zb[k] = z[b, e, t0 + k]
                        yb[k] = ysave[b, e, t0 + k]
                for kv in range(mv):
                    o = kv * W
                    x = vload(xb, o)
                    if softplus:
                        d = vsoftplus(x)
                        vstore(sg, o, vsigmoid(x))
                    else:
                        d = x
                        vstore(sg, o, vsplat(1.0))
                    vstore(xb, o, d)
                    vstore(dub, o, vmul(d, vload(ub, o)))
                    if has_z:
                        zv = vload(zb, o)
                        sz = vsigmoid(zv)
                        go = vload(gy, o)
                        # d out / d z = y * sz * (1 + z (1 - sz)),  d out / d y = z * sz
                        gate_d = vmul(sz, vfma(zv, vsub(vsplat(1.0), sz), vsplat(1.0)))
                        vstore(zb, o, vmul(vmul(go, vload(yb, o)), gate_d))
                        vstore(gy, o, vmul(go, vmul(zv, sz)))
                if has_z:
                    for k in range(m):
                        dz[b, e, t0 + k] = zb[k]
                for v in range(NV):
                    o = v * W
                    Av = vload(A, e * Np + o)
                    # 2. recompute the slice's decays and states from the chunk's checkpoint
                    h = vload(ckpt, ((b * ne + e) * nchunks + c) * Np + o)
                    vstore(hb, 0, h)
                    for k in range(m):
                        a = vexp(vmul(vsplat(xb[k]), Av))
                        vstore(ab, k * W, a)
                        h = vfma(a, h, vmul(vsplat(dub[k]), vload(Bt, (b * L + t0 + k) * Np + o)))
                        vstore(hb, (k + 1) * W, h)
                    # 3. adjoint recurrence backwards through the chunk, and the gradients
                    lam_c = vload(carry, j * Np + o)
                    dAv = vsplat(0.0)
                    for k in range(m - 1, -1, -1):
                        rb = (b * L + t0 + k) * Np + o
                        rp = ((b * G + g) * L + t0 + k) * Np + o
                        a = vload(ab, k * W)
                        gk = vsplat(gy[k])
                        lam = vfma(gk, vload(Ct, rb), lam_c)
                        lam_c = vmul(lam, a)
                        vstore(dCt_part, rp, vfma(gk, vload(hb, (k + 1) * W), vload(dCt_part, rp)))
                        vstore(dBt_part, rp, vfma(lam, vsplat(dub[k]), vload(dBt_part, rp)))
                        q = vmul(lam, vmul(vload(hb, k * W), a))
                        dAv = vfma(q, vsplat(xb[k]), dAv)
                        lb = vmul(lam, vload(Bt, rb))
                        s1[k] += vhsum(lb)
                        s2[k] += vhsum(vfma(q, Av, vmul(vsplat(ub[k]), lb)))
                    vstore(carry, j * Np + o, lam_c)
                    vstore(tmp, 0, dAv)
                    for n in range(W):
                        dA_acc[j, o + n] += tmp[n]
                # 4. per-token gradients
                dD_c = _F32(0.0)
                dbias_c = _F32(0.0)
                for k in range(m):
                    dx = s2[k] * sg[k]
                    ddelta[b, e, t0 + k] = dx
                    du[b, e, t0 + k] = gy[k] * De + xb[k] * s1[k]
                    dbias_c += dx
                    dD_c += gy[k] * ub[k]
                dD_acc[j] += dD_c
                dbias_acc[j] += dbias_c
        for j in range(ng):
            for n in range(Np):
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


__all__ = ["build", "W"]
