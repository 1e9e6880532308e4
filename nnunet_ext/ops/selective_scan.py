"""The Mamba-1 selective scan: one function, several back-ends (see :mod:`nnunet_ext.ops.backends`:
mamba-ssm's CUDA kernel, our Triton kernel :mod:`nnunet_ext.ops.scan_triton`, the fused numba CPU
kernel :mod:`nnunet_ext.ops.scan_fused`, and the PyTorch scan below).

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,     y_t = <C_t, h_t> + D u_t,     out = y ⊙ SiLU(z)
    Δ = softplus(Δ_raw + delta_bias)  (softplus only with ``delta_softplus=True``)

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023), Alg. 2.

The PyTorch back-end (``torch``) is a *blocked* scan, written as one ``autograd.Function``:

- Tokens are cut into blocks of ``T`` (:data:`BLOCK`). Inside a block the recurrence runs from a
  zero state, one step per in-block position, vectorised over all blocks of a segment (T
  ``addcmul`` calls); the decay factors α_t = e^{Δ_t A} come from one ``exp`` over the segment.
  The state entering each block is then carried in by ``h_t += e^{S_t A} h_{block start}``, with
  ``e^{S_t A}`` the in-block cumulative product of α (S_t the in-block cumulative sum of Δ).
  Every step is the exact recurrence -- no division, no rescaling by large exponentials, nothing
  whose safety depends on the size of Δ·A -- so one code path serves every input and no value is
  ever read back to the host (no device synchronisation per call).
- The state between blocks is carried by a Python loop over L/T blocks (one ``addcmul`` each).
- The sequence is processed in segments of :data:`SEGMENT_ELEMS` state elements or more (at most
  :data:`MAX_SEGMENTS` segments, each at most :data:`SEGMENT_ELEMS_MAX`), so temporaries stay
  small: the extra memory is bounded, not B·E·N·L.
- Forward saves only its inputs and the state at each block start (1/T of the states); backward
  recomputes each segment's states and runs the adjoint recurrence
  ``λ_t = C_t g_t + exp(Δ_{t+1} A) λ_{t+1}`` with the same blocked code on time-reversed
  segments, then forms dU, dΔ, dA, dB, dC by reductions.

Computation is float32 (float64 for float64 input), autocast disabled; the output is cast back
to u's dtype.

Under ``torch.compile`` dynamo never traces the dispatch: inference calls the opaque custom op
``torch.ops.nnunet_ext.selective_scan``, calls that need gradients run eagerly behind a graph
break (see :mod:`nnunet_ext.ops._opaque`).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F

from nnunet_ext.ops import _opaque, backends

#: tokens per block of the PyTorch scan (compare others with `nnunet-ext benchmark-scan`, methods torch@T)
BLOCK = 32
#: state elements (B·E·N·tokens) per segment on CPU: at least ~4 MB float32 tensors (they stay
#: in L2/L3), more for long inputs so that there are at most MAX_SEGMENTS segments, up to
#: SEGMENT_ELEMS_MAX (64 MB tensors). Few large ops matter when the CPU is oversubscribed (e.g.
#: nnU-Net's augmentation workers beside training): every op is a parallel region whose threads
#: may wait for a time slice, and thousands of small ops then cost seconds.
SEGMENT_ELEMS = 1 << 20
SEGMENT_ELEMS_MAX = 1 << 24
MAX_SEGMENTS = 8
#: the same on GPUs, where larger launches pay off (extra memory ~10 such tensors, ~1.3 GB)
SEGMENT_ELEMS_CUDA = 1 << 25


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------

def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend=None):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` convention.

    Args:
        u: (B, E, L) input.
        delta: (B, E, L) step size Δ (before ``delta_bias`` / softplus).
        A: (E, N) real state matrix (Mamba: ``-exp(A_log)``).
        B, C: (B, N, L) input-dependent projections.
        D: optional (E,) skip.  z: optional (B, E, L) gate, ``y * silu(z)``.
        delta_bias: optional (E,) added to Δ before softplus.
        delta_softplus: apply softplus to Δ.
        return_last_state: also return the final state (B, E, N), float32.
        backend: None/'auto' | 'cuda' | 'triton' | 'fused' | 'torch'; None reads
            ``$NNUNET_EXT_SCAN_BACKEND``.

    Returns:
        y (B, E, L) in u's dtype, and if ``return_last_state`` the last state (B, E, N) in
        float32 (float64 for float64 u).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend)
    if not _opaque.compiling():
        return _dispatch(*args)
    if _opaque.needs_grad(u, delta, A, B, C, D, z, delta_bias):
        return _dispatch_graph_break(*args)
    y, last = _SCAN_OP(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), backend)
    return (y, last) if return_last_state else y


def _state_dtype(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


#: back-end name -> the function that runs it (looked up when called, so tests may replace one)
_IMPLEMENTATIONS = {
    "cuda": lambda: backends.mamba_ssm_scan(),
    "triton": lambda: backends.triton_scan(),
    "fused": lambda: backends.fused_scan(),
    "torch": lambda: selective_scan_torch,
}
#: the function every scan runs instead of a back-end, inside :func:`substitute_scan`
_SUBSTITUTE: contextvars.ContextVar = contextvars.ContextVar("nnunet_ext_scan_substitute", default=None)


def resolve_scan(u, backend=None):
    """The function that runs :func:`selective_scan` for ``u`` (a tensor or a device): the back-end
    :func:`~nnunet_ext.ops.backends.resolve_backend` picks, called with ``(u, delta, A, B, C, D=, z=,
    delta_bias=, delta_softplus=, return_last_state=)``."""
    return _IMPLEMENTATIONS[backends.resolve_backend(u, backend, op="scan")]()


@contextlib.contextmanager
def substitute_scan(fn):
    """Within this context (this thread or task), every :func:`selective_scan` call runs
    ``fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)`` instead of a
    back-end; ``fn`` returns what :func:`selective_scan` returns.

    For tools that follow tensors rather than compute them: the memory estimate
    (:mod:`nnunet_ext.planning.estimate`) counts the scan as a given kernel's saved tensors and
    transients this way. Not for training: ``fn`` bypasses the back-end choice and its checks.
    """
    token = _SUBSTITUTE.set(fn)
    try:
        yield
    finally:
        _SUBSTITUTE.reset(token)


def _dispatch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend):
    """Run the back-end picked for ``u`` (eagerly); same arguments and results as :func:`selective_scan`."""
    substitute = _SUBSTITUTE.get()
    if substitute is not None:
        return substitute(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out = resolve_scan(u, backend)(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                   delta_softplus=delta_softplus, return_last_state=return_last_state)
    if not return_last_state:
        return out
    y, last = out
    return y, last.to(_state_dtype(u))


# ---------------------------------------------------------------------------------------------
# while torch.compile traces (see nnunet_ext.ops._opaque)
# ---------------------------------------------------------------------------------------------

_dispatch_graph_break = _opaque.graph_break(_dispatch)


@torch.library.custom_op(
    "nnunet_ext::selective_scan", mutates_args=(),
    schema="(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
           "Tensor? delta_bias, bool delta_softplus, str? backend) -> (Tensor, Tensor)")
def _scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    """:func:`selective_scan` with ``return_last_state=True``: y (B, E, L) in u's dtype and the
    last state (B, E, N), both contiguous."""
    y, last = _dispatch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True, backend)
    return y.to(u.dtype).contiguous(), last.contiguous()


@_scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    return u.new_empty(u.shape), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=_state_dtype(u))


_scan_op.register_autograd(_opaque.no_backward("nnunet_ext::selective_scan", "nnunet_ext.ops.selective_scan"))
_SCAN_OP = torch.ops.nnunet_ext.selective_scan


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    def fail(msg):
        raise ValueError(f"selective_scan: {msg}")

    if u.dim() != 3:
        fail(f"u must be (batch, channels E, length L), got shape {tuple(u.shape)}")
    b, e, length = u.shape
    if tuple(delta.shape) != (b, e, length):
        fail(f"delta must have u's shape {(b, e, length)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != e or A.is_complex():
        fail(f"A must be real (E, N) = ({e}, N), got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, length):
            fail(f"{name} must be input-dependent (batch, N, L) = {(b, n, length)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (e,):
            fail(f"{name} must be (E,) = ({e},), got {tuple(t.shape)}")
    if z is not None and tuple(z.shape) != (b, e, length):
        fail(f"z must have u's shape {(b, e, length)}, got {tuple(z.shape)}")


# ---------------------------------------------------------------------------------------------
# the PyTorch back-end
# ---------------------------------------------------------------------------------------------

def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, block: int = BLOCK):
    """The blocked PyTorch scan (the ``torch`` back-end); same arguments and shapes as
    :func:`selective_scan`, plus ``block`` (tokens per block, T)."""
    dtype = u.dtype
    if u.device.type == "meta":  # shape-only run (nnunet-ext summary): no values to compute
        y = torch.empty_like(u)
        last = u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
        return (y, last) if return_last_state else y
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_, delta_, A_, B_, C_ = (t.to(ct) for t in (u, delta, A, B, C))
        if delta_bias is not None:
            delta_ = delta_ + delta_bias.to(ct)[:, None]
        if delta_softplus:
            delta_ = F.softplus(delta_)
        y, last = _BlockedScan.apply(u_, delta_, A_, B_, C_, int(block))
        if D is not None:
            y = y + D.to(ct)[:, None] * u_
        if z is not None:
            y = y * F.silu(z.to(ct))
    y = y.to(dtype)
    return (y, last) if return_last_state else y


class _BlockedScan(torch.autograd.Function):
    """y_t = <C_t, h_t>, h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t; inputs already in compute dtype.

    forward(u (B,E,L), delta (B,E,L), A (E,N), B (B,N,L), C (B,N,L), block) -> y (B,E,L), h_L (B,E,N)
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, block):
        bsz, e, length = u.shape
        n = A.shape[1]
        T = max(1, min(block, length))
        nblk = -(-length // T)
        lp = nblk * T
        pad = lp - length
        # padded tokens have Δ = 0 and u = 0: the state passes through them unchanged.
        # delta gets one extra zero token: backward reads Δ_{t+1}.
        u_p = F.pad(u, (0, pad))
        d_p = F.pad(delta, (0, pad + 1))
        bt = F.pad(Bm, (0, pad)).transpose(1, 2).contiguous()  # (B, Lp, N)
        ctt = F.pad(Cm, (0, pad)).transpose(1, 2).contiguous()
        w = u_p * d_p[..., :lp]  # Δ u, (B, E, Lp)

        total = bsz * e * n * lp
        seg_elems = (max(SEGMENT_ELEMS, min(SEGMENT_ELEMS_MAX, total // MAX_SEGMENTS))
                     if u.device.type == "cpu" else SEGMENT_ELEMS_CUDA)
        seg = max(1, seg_elems // (bsz * e * n * T))
        y = u.new_empty(bsz, e, lp)
        h_in = u.new_empty(bsz, e, nblk, n)  # state at each block start (for backward)
        state = u.new_zeros(bsz, e, n)
        tab = _BlockTable(d_p[:, :, :lp].reshape(bsz, e, nblk, T), A)
        for j0 in range(0, nblk, seg):
            j1 = min(nblk, j0 + seg)
            nb, s0, s1 = j1 - j0, j0 * T, j1 * T
            xb = w[:, :, s0:s1].reshape(bsz, e, nb, T, 1) * bt[:, None, s0:s1].reshape(bsz, 1, nb, T, n)
            h, hin, state = _scan_blocks(tab, j0, j1, xb, A, state)
            h_in[:, :, j0:j1] = hin
            torch.sum(h.mul_(ctt[:, None, s0:s1].reshape(bsz, 1, nb, T, n)), dim=-1,
                      out=y[:, :, s0:s1].view(bsz, e, nb, T))
        ctx.save_for_backward(u_p, d_p, A, bt, ctt, h_in)
        ctx.shape = (bsz, e, n, length, T, nblk, seg)
        return y[:, :, :length], state

    @staticmethod
    def backward(ctx, gy, glast):
        with torch.autocast(device_type=ctx.saved_tensors[0].device.type, enabled=False):
            return _BlockedScan._backward(ctx, gy, glast)

    @staticmethod
    def _backward(ctx, gy, glast):
        u_p, d_p, A, bt, ctt, h_in = ctx.saved_tensors
        bsz, e, n, length, T, nblk, seg = ctx.shape
        lp = nblk * T
        g = u_p.new_zeros(bsz, e, lp)
        if gy is not None:
            g[:, :, :length] = gy
        lam = glast.to(u_p.dtype).contiguous() if glast is not None else u_p.new_zeros(bsz, e, n)
        w = u_p * d_p[..., :lp]

        s_bc = u_p.new_empty(bsz, e, lp)     # Σ_n λ B   -> du, dΔ
        s_da = u_p.new_empty(bsz, e, lp)     # Σ_n A λ α h_{t-1} -> dΔ
        d_bt = u_p.new_empty(bsz, lp, n)
        d_ct = u_p.new_empty(bsz, lp, n)
        d_a = u_p.new_zeros(e, n)
        tab = _BlockTable(d_p[:, :, :lp].reshape(bsz, e, nblk, T), A)
        # reversed time: token τ of the reversed sequence reads Δ_{t+1}, t = Lp-1-τ
        tab_r = _BlockTable(d_p[:, :, 1:].flip(-1).reshape(bsz, e, nblk, T), A)
        for j0 in reversed(range(0, nblk, seg)):
            j1 = min(nblk, j0 + seg)
            nb, s0, s1 = j1 - j0, j0 * T, j1 * T
            ls = s1 - s0
            b_seg = bt[:, None, s0:s1]          # (B, 1, Ls, N)
            c_seg = ctt[:, None, s0:s1]
            # forward states h_t and α_t h_{t-1}, from the saved block-start states
            xb = w[:, :, s0:s1].reshape(bsz, e, nb, T, 1) * b_seg.reshape(bsz, 1, nb, T, n)
            h, ahp = _states_known_start(tab, j0, j1, xb, A, h_in[:, :, j0:j1])
            # adjoint λ_t = C_t g_t + exp(Δ_{t+1} A) λ_{t+1}: the same scan on reversed time,
            # where this segment is blocks nblk-j1 .. nblk-j0-1
            mur = (g[:, :, s0:s1].flip(-1).reshape(bsz, e, nb, T, 1)
                   * c_seg.flip(2).reshape(bsz, 1, nb, T, n))
            lamr, _, lam = _scan_blocks(tab_r, nblk - j1, nblk - j0, mur, A, lam)
            lam_f = lamr.flip((2, 3)).reshape(bsz, e, ls, n)
            h = h.view(bsz, e, ls, n)
            ahp = ahp.view(bsz, e, ls, n)
            # reductions
            torch.sum(h.mul_(g[:, :, s0:s1, None]), dim=1, out=d_ct[:, s0:s1])
            torch.sum(lam_f * b_seg, dim=-1, out=s_bc[:, :, s0:s1])
            torch.sum(lam_f.mul(w[:, :, s0:s1, None]), dim=1, out=d_bt[:, s0:s1])
            da = ahp.mul_(lam_f)  # dL/d(Δ_t A) per state
            d_a += torch.matmul(d_p[:, :, None, s0:s1], da).sum(0).squeeze(-2)
            torch.sum(da.mul_(A[:, None, :]), dim=-1, out=s_da[:, :, s0:s1])
        du = (s_bc * d_p[..., :lp])[:, :, :length]
        ddelta = (s_bc * u_p + s_da)[:, :, :length]
        d_b = d_bt[:, :length].transpose(1, 2)
        d_c = d_ct[:, :length].transpose(1, 2)
        return du, ddelta, d_a, d_b, d_c, None


# ---------------------------------------------------------------------------------------------
# in-block recurrence and the carry between blocks
# ---------------------------------------------------------------------------------------------

class _BlockTable:
    """Per-block decay of one time direction, computed once for the whole sequence.

    From Δ in blocks, d (B, E, nblk, T): ``d`` itself and ``decay`` = e^{S_T A} (B, E, nblk, N),
    S_T the block's sum of Δ (what carries a block-start state to the block's end).
    """

    def __init__(self, d, A):
        self.d = d
        self.decay = torch.exp(d.sum(-1)[..., None] * A[:, None, :])

    def segment(self, j0, j1):
        """(d, decay) of blocks j0..j1-1."""
        return self.d[:, :, j0:j1], self.decay[:, :, j0:j1]


def _exponentials(x, A):
    """exp(x ⊗ A): (B, E, nb, T) × (E, N) -> (B, E, nb, T, N)."""
    return (x[..., None] * A[:, None, None, :]).exp_()


def _scan_blocks(tab, j0, j1, xb, A, h0):
    """Scan blocks j0..j1-1 from the state h0; block-start states found by the carry loop.

    tab: :class:`_BlockTable`; xb (B, E, nb, T, N) inputs x_t (overwritten); A (E, N); h0 (B, E, N).
    Returns h (B, E, nb, T, N) (``xb``'s storage), block-start states (B, E, nb, N), h_end (B, E, N).
    """
    d, decay = tab.segment(j0, j1)
    T = d.shape[-1]
    alpha = _exponentials(d, A)                                    # α_t = e^{Δ_t A}
    # in-block recurrence from a zero state, all blocks at once
    for t in range(1, T):
        torch.addcmul(xb[..., t, :], alpha[..., t, :], xb[..., t - 1, :], out=xb[..., t, :])
    h_start, h_end = _carry(decay, xb[..., T - 1, :], h0)
    h = xb.addcmul_(alpha.cumprod_(3), h_start[..., None, :])     # + e^{S_t A} h_start
    return h, h_start, h_end


def _states_known_start(tab, j0, j1, xb, A, h_start):
    """States and α_t h_{t-1} of blocks j0..j1-1 when each block's start state is known.

    xb (B, E, nb, T, N) (overwritten); h_start (B, E, nb, N).
    Returns h, α_t·h_{t-1}, both (B, E, nb, T, N).
    """
    d, _ = tab.segment(j0, j1)
    T = d.shape[-1]
    ahp = _exponentials(d, A)                       # α_t, then α_t h_{t-1} in place
    prev = h_start
    for t in range(T):
        a_t = ahp[..., t, :].mul_(prev)
        prev = xb[..., t, :].add_(a_t)
    return xb, ahp


def _carry(p_blk, g_end, h0):
    """State at each block start: H_j = P_j H_{j-1} + G_j, one addcmul per block.

    p_blk, g_end (B, E, nb, N); h0 (B, E, N) -> (starts (B, E, nb, N), end (B, E, N)).
    """
    nb = p_blk.shape[2]
    p = p_blk.permute(2, 0, 1, 3).contiguous().unbind(0)
    g = g_end.permute(2, 0, 1, 3).contiguous().unbind(0)
    hall = h0.new_empty(nb + 1, *h0.shape)
    hall[0] = h0
    hs = hall.unbind(0)
    for j in range(nb):
        torch.addcmul(g[j], p[j], hs[j], out=hs[j + 1])
    return hall[:nb].permute(1, 2, 0, 3), hall[nb].clone()
