"""Plain sequential selective scan: the definition every back-end is tested against.

One Python step per token, so it is only for tests and small inputs (``nnunet-ext gpu-check``
compares every back-end with it). It is a function, not a back-end: ``backend=`` and
``$NNUNET_EXT_SCAN_BACKEND`` do not offer it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
    """Mamba-1 selective scan, mamba-ssm's argument convention, computed in float32 (float64
    throughout when u is float64).

    Shapes: u, delta, z (B, E, L); A (E, N); B, C (B, N, L) (input-dependent, Mamba's case);
    D, delta_bias (E,).
    Returns y (B, E, L) in u's dtype [and the last state (B, E, N), float32 (float64 for float64 u)].

        h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
        y_t = <C_t, h_t> + D * u_t ;  y = y * silu(z)
    """
    dtype = u.dtype
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bsz, E, L = u.shape
    h = u.new_zeros(Bsz, E, A.shape[1])
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)  # (B, E, N)
        h = dA * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(ct)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype)
    return (y, h) if return_last_state else y
