"""The fused CPU selective-scan kernel (numba) against the plain sequential reference.

Forward and every gradient (u, delta, A, B, C, D, z, delta_bias, and the last state's) within
1e-4 relative (max abs difference over the reference's max magnitude, in float64), for
L = 1, 7, T, T + 1, 3T + 5 and 2048, with and without z / D / delta_bias, softplus on and off,
channel and state counts below, at and above the kernels' vector width (16); results are
bit-identical between runs and between thread counts.
The kernels compile once per process (and load from numba's disk cache afterwards).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nnunet_ext.ops import scan_fused
from nnunet_ext.ops.reference import selective_scan_sequential
from nnunet_ext.ops.scan_fused import CHUNK_T, fused_available, selective_scan_fused

T = CHUNK_T
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TOL = 1e-4

pytestmark = pytest.mark.skipif(not fused_available(), reason="numba missing or the fused kernel does not compile")


def _inputs(Bn, E, N, L, *, D=True, z=True, bias=True, delta_scale=0.5, positive=False, seed=0,
            dtype=torch.float32):
    """Leaf tensors (requires_grad) in mamba-ssm's layout; None for the absent optional ones.

    ``positive``: delta + delta_bias > 0 (the case without softplus: a negative step would make
    exp(delta A) > 1 and the state blow up).
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    x = {
        "u": r(Bn, E, L),
        "delta": r(Bn, E, L).abs() * delta_scale + 0.05 if positive else r(Bn, E, L) * delta_scale - 0.5,
        "A": -torch.exp(r(E, N) * 0.5),
        "B": r(Bn, N, L),
        "C": r(Bn, N, L),
        "D": r(E) if D else None,
        "z": r(Bn, E, L) if z else None,
        "delta_bias": (r(E).abs() * 0.05 if positive else r(E) * 0.3) if bias else None,
    }
    return {k: (v.to(dtype).requires_grad_() if v is not None else None) for k, v in x.items()}


def _run(fn, x, *, softplus, last, gy, glast=None):
    """Outputs and gradients (dict name -> tensor) of sum(y * gy) [+ sum(last_state * glast)]."""
    out = fn(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], delta_bias=x["delta_bias"],
             delta_softplus=softplus, return_last_state=last)
    y, h = (out if last else (out, None))
    loss = (y.float() * gy).sum()
    if last:
        loss = loss + (h * glast).sum()
    leaves = {k: v for k, v in x.items() if v is not None}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, h, dict(zip(leaves, grads))


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _compare(Bn, E, N, L, *, softplus=True, last=False, tol=TOL, **kw):
    x = _inputs(Bn, E, N, L, positive=not softplus, **kw)
    gy = torch.randn(Bn, E, L)
    glast = torch.randn(Bn, E, N) if last else None
    y, h, g = _run(selective_scan_fused, x, softplus=softplus, last=last, gy=gy, glast=glast)
    y_ref, h_ref, g_ref = _run(selective_scan_sequential, x, softplus=softplus, last=last, gy=gy, glast=glast)
    assert y.shape == (Bn, E, L) and y.dtype == x["u"].dtype
    assert _rel(y, y_ref) < tol, "forward"
    if last:
        assert h.shape == (Bn, E, N) and h.dtype == torch.float32
        assert _rel(h, h_ref) < tol, "last state"
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert g[k].shape == x[k].shape and g[k].dtype == x[k].dtype, k
        assert _rel(g[k], g_ref[k]) < tol, f"grad {k}: {_rel(g[k], g_ref[k]):.2e}"


@pytest.mark.parametrize("L", [1, 7, T + 1])
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("with_z", [True, False])
@pytest.mark.parametrize("with_D", [True, False])
def test_matches_reference_short(L, softplus, with_z, with_D):
    _compare(2, 3, 4, L, softplus=softplus, z=with_z, D=with_D, bias=with_D)


@pytest.mark.parametrize("L", [T, 3 * T + 5])
@pytest.mark.parametrize("softplus,with_z,with_D", [(True, True, True), (False, False, False)])
def test_matches_reference_chunk_boundaries(L, softplus, with_z, with_D):
    _compare(2, 3, 4, L, softplus=softplus, z=with_z, D=with_D, bias=with_D)


def test_matches_reference_long():
    # the reference's backward costs O(B N L^2) (a full-size gradient per indexed token), so N stays small
    _compare(2, 2, 8, 2048, softplus=True, last=True)


@pytest.mark.parametrize("L", [1, 7, T + 1, 3 * T + 5])
def test_last_state_and_its_gradient(L):
    _compare(2, 3, 4, L, softplus=True, last=True)


@pytest.mark.parametrize("chunk,L", [(1, 5), (4, 4), (4, 13), (5, 3)])
def test_other_chunk_sizes(monkeypatch, chunk, L):
    """The checkpoint interval is a run-time argument of the kernels: many small chunks, partial ones."""
    monkeypatch.setattr(scan_fused, "CHUNK_T", chunk)
    _compare(2, 3, 4, L, softplus=True, last=True)


def test_softplus_branches_and_large_decays():
    """delta + bias spread over [-40, 40]: softplus' pass-through (> 20) and tiny (< -16) branches."""
    _compare(2, 4, 8, 50, softplus=True, delta_scale=15.0)
    _compare(2, 4, 8, 50, softplus=False, delta_scale=0.2)


def test_odd_state_size_and_one_channel():
    _compare(1, 1, 3, 40, softplus=True)
    _compare(3, 5, 11, 33, softplus=True, last=True)


def test_channels_and_states_across_vector_widths():
    """More than one W-lane group of channels (the last one partial) in the forward, and a state
    padded to two vectors in the backward; uneven channel groups there (B = 1: 4 groups of 17)."""
    _compare(1, 17, 17, 2 * T + 3, softplus=True, last=True)
    _compare(2, 16, 16, 21, softplus=False, last=True)


def test_finite_differences():
    """Directional derivatives of sum(y * w) against central differences (float32 kernel, so loose)."""
    torch.manual_seed(1)
    x = _inputs(1, 2, 3, 9)
    w = torch.randn(1, 2, 9)

    def f(vals):
        y = selective_scan_fused(vals["u"], vals["delta"], vals["A"], vals["B"], vals["C"], D=vals["D"],
                                 z=vals["z"], delta_bias=vals["delta_bias"], delta_softplus=True)
        return (y.double() * w).sum()

    grads = torch.autograd.grad(f(x), [x[k] for k in NAMES])
    eps = 1e-2
    for k, g in zip(NAMES, grads):
        v = torch.randn_like(x[k])
        with torch.no_grad():
            plus = {n: (t + eps * v if n == k else t) for n, t in x.items()}
            minus = {n: (t - eps * v if n == k else t) for n, t in x.items()}
            num = (f(plus) - f(minus)) / (2 * eps)
        ana = (g.double() * v.double()).sum()
        assert abs(num - ana) <= 2e-3 * max(1.0, abs(ana)), (k, num.item(), ana.item())


def test_dtypes_and_autocast():
    x64 = _inputs(2, 3, 4, 20, dtype=torch.float64)
    y, _, g = _run(selective_scan_fused, x64, softplus=True, last=False, gy=torch.randn(2, 3, 20))
    assert y.dtype == torch.float64 and all(g[k].dtype == torch.float64 for k in g)

    xb = _inputs(2, 3, 4, 20, dtype=torch.bfloat16)
    gy = torch.randn(2, 3, 20)
    y, _, g = _run(selective_scan_fused, xb, softplus=True, last=False, gy=gy)
    y_ref, _, g_ref = _run(selective_scan_sequential, xb, softplus=True, last=False, gy=gy)
    assert y.dtype == torch.bfloat16 and all(g[k].dtype == torch.bfloat16 for k in g)
    assert _rel(y, y_ref) < 2e-2 and all(_rel(g[k], g_ref[k]) < 2e-2 for k in g)

    x = _inputs(2, 3, 4, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ac, _, g_ac = _run(selective_scan_fused, x, softplus=True, last=False, gy=gy)
    y32, _, g32 = _run(selective_scan_fused, x, softplus=True, last=False, gy=gy)
    assert y_ac.dtype == torch.float32
    assert torch.equal(y_ac, y32) and all(torch.equal(g_ac[k], g32[k]) for k in g32)


def test_no_grad_partial_grad_and_grouped_B():
    x = _inputs(2, 3, 4, 30)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    kw = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)
    with torch.no_grad():
        y0 = selective_scan_fused(*args, **kw)
    y1 = selective_scan_fused(*args, **kw)
    assert torch.equal(y0, y1) and not y0.requires_grad and y1.requires_grad
    # only some inputs need gradients
    u = x["u"].detach().requires_grad_()
    y2 = selective_scan_fused(u, x["delta"].detach(), x["A"].detach(), x["B"].detach(), x["C"].detach(),
                              D=x["D"].detach(), z=x["z"].detach(), delta_bias=x["delta_bias"].detach(),
                              delta_softplus=True)
    (gu,) = torch.autograd.grad(y2.sum(), [u])
    (gu_ref,) = torch.autograd.grad(y1.sum(), [x["u"]])
    assert torch.allclose(gu, gu_ref, rtol=0, atol=1e-6)
    # mamba-ssm's grouped layout (B, 1, N, L)
    y3 = selective_scan_fused(x["u"], x["delta"], x["A"], x["B"].unsqueeze(1), x["C"].unsqueeze(1), **kw)
    assert torch.equal(y3, y1)
    (gB,) = torch.autograd.grad(y3.sum(), [x["B"]])
    assert gB.shape == x["B"].shape


def test_backward_twice_with_retained_graph():
    x = _inputs(2, 3, 4, 40)
    y = selective_scan_fused(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                             delta_bias=x["delta_bias"], delta_softplus=True)
    y.sum().backward(retain_graph=True)
    first = {k: v.grad.clone() for k, v in x.items()}
    y.sum().backward()
    for k, v in x.items():
        assert torch.allclose(v.grad, 2 * first[k], rtol=1e-6, atol=0), k


def test_empty_sequence():
    x = _inputs(2, 3, 4, 0)
    y, h = selective_scan_fused(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True)
    assert y.shape == (2, 3, 0) and torch.equal(h, torch.zeros(2, 3, 4))
    (y.sum() + h.sum()).backward()
    assert torch.equal(x["A"].grad, torch.zeros(3, 4))


def test_threads_follow_torch_and_results_are_bit_identical():
    """Runs are deterministic, and the thread count changes no summation order: 1 and 2 threads give
    the same bits (the backward's channel groups do not depend on the thread count)."""
    import numba

    x = _inputs(1, 6, 4, 70)  # batch 1: several channel groups in the backward
    gy = torch.randn(1, 6, 70)
    glast = torch.randn(1, 6, 4)
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            results.append(_run(selective_scan_fused, x, softplus=True, last=True, gy=gy, glast=glast))
            assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(old)
    assert scan_fused.work_groups(1, 6) > 1
    (y1, h1, g1) = results[0]
    for y, h, g in results[1:]:
        assert torch.equal(y, y1) and torch.equal(h, h1)
        for k in g1:
            assert torch.equal(g[k], g1[k]), k


def test_rejects_bad_inputs():
    x = {k: (v.detach() if v is not None else None) for k, v in _inputs(2, 3, 4, 5).items()}
    meta = torch.zeros(2, 3, 5, device="meta")
    with pytest.raises(ValueError, match="CPU"):
        selective_scan_fused(meta, x["delta"], x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="delta"):
        selective_scan_fused(x["u"], x["delta"][:, :, :4], x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_fused(x["u"], x["delta"], x["A"][:2], x["B"], x["C"])
    with pytest.raises(ValueError, match="input-dependent"):
        selective_scan_fused(x["u"], x["delta"], x["A"], torch.randn(3, 4), x["C"])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan_fused(x["u"], x["delta"], x["A"], x["B"], x["C"], D=torch.randn(4))


def _python(code, timeout=600, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def test_numba_is_imported_lazily():
    r = _python("""
        import sys
        import nnunet_ext.ops.scan_fused
        assert 'numba' not in sys.modules, 'numba imported eagerly'
        from nnunet_ext.ops.scan_fused import fused_available
        assert fused_available() and 'numba' in sys.modules
    """)
    assert r.returncode == 0, r.stderr


def test_forked_children_can_use_the_kernel():
    """numba's default layer here is GNU OpenMP, which aborts a forked child; we select a fork-safe one."""
    r = _python("""
        import multiprocessing as mp
        import torch
        from nnunet_ext.ops.scan_fused import selective_scan_fused

        def work(seed):
            g = torch.Generator().manual_seed(seed)
            u = torch.randn(1, 4, 30, generator=g)
            y = selective_scan_fused(u, u.abs(), -torch.ones(4, 3), torch.randn(1, 3, 30, generator=g),
                                     torch.randn(1, 3, 30, generator=g))
            return y.sum().item()

        if __name__ == "__main__":
            expected = [work(s) for s in range(2)]
            with mp.get_context("fork").Pool(2) as pool:
                assert pool.map(work, range(2)) == expected
    """, timeout=180)  # a child stuck in GNU OpenMP would hang here
    assert r.returncode == 0, r.stderr


def test_concurrent_calls_from_python_threads():
    """numba's workqueue layer must not be entered from two threads at once: calls are serialised."""
    r = _python("""
        import threading
        import torch
        from nnunet_ext.ops.scan_fused import selective_scan_fused

        u = torch.randn(2, 8, 2000, requires_grad=True)
        args = (u, u.detach().abs(), -torch.ones(8, 4), torch.randn(2, 4, 2000), torch.randn(2, 4, 2000))
        expected = selective_scan_fused(*args).detach()
        errors = []

        def work():
            try:
                for _ in range(20):
                    y = selective_scan_fused(*args)
                    y.sum().backward()
                    assert torch.equal(y.detach(), expected)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors
    """, timeout=180)
    assert r.returncode == 0, r.stderr


def test_no_usable_cache_directory_does_not_crash(tmp_path):
    """With no writable cache location numba cannot cache; the kernels then compile in memory."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = _python("""
        import torch
        from nnunet_ext.ops.scan_fused import fused_available, selective_scan_fused
        assert fused_available()
        u = torch.randn(1, 2, 9)
        y = selective_scan_fused(u, u, -torch.ones(2, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9))
        assert y.shape == (1, 2, 9) and torch.isfinite(y).all()
    """, NUMBA_CACHE_DIR=str(not_a_dir / "cache"), NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator")
    assert r.returncode == 0, r.stderr
