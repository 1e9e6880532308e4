"""The Triton selective scan (``triton`` back-end), run on the CPU by Triton's interpreter.

Triton decides between compiling and interpreting when ``@triton.jit`` decorates, i.e. when
:mod:`nnunet_ext.ops.scan_triton` is imported: the module fixture sets ``TRITON_INTERPRET=1`` and
(re)imports it, and re-imports it without the variable afterwards; meanwhile
:func:`tests.ops.triton_interpreter.vectorised_scans` speeds the interpreter up. It is slow all the same, so
sizes are tiny; small ``chunk`` / ``block_e`` values make the tiny inputs span several chunks and
partial channel blocks (lengths that are not a multiple of the chunk, L = 1, E not a multiple of
the channel block).

Every output and gradient is compared with the float64 sequential reference on the same
(rounded) input values, within the float32 accumulation bound of :mod:`tests.ops.precision` (plus
one rounding of the result for float16 / bfloat16 outputs).
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np
import pytest
import torch

from nnunet_ext.ops import (ENV_VAR, BackendUnavailableError, available_backends, backends, resolve_backend,
                            selective_scan)
from nnunet_ext.ops.reference import selective_scan_sequential
from tests.blocks.test_mamba_blocks import BLOCKS, _block_outputs_and_grads, use_scan
from tests.ops.precision import assert_f32_close, f32_tolerance
from tests.ops.triton_interpreter import vectorised_scans

pytest.importorskip("triton")

MODULE = "nnunet_ext.ops.scan_triton"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
#: Triton's own (generic_scan, generic_reduce) while the fixture's faster ones are installed
TRITONS_OWN_FOLDS = []


@pytest.fixture(scope="module")
def st():
    """nnunet_ext.ops.scan_triton built for Triton's interpreter."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        mod = importlib.reload(sys.modules[MODULE]) if MODULE in sys.modules else importlib.import_module(MODULE)
        assert mod.INTERPRET
        backends.clear_cache()
        with vectorised_scans(mod) as tritons_own:
            TRITONS_OWN_FOLDS[:] = tritons_own
            yield mod
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
        importlib.reload(sys.modules[MODULE])
        backends.clear_cache()


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def make_inputs(length, b=2, e=3, n=4, seed=0, d=True, z=True, bias=True, softplus=True, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(u=r(b, e, length), delta=r(b, e, length) * delta_scale, A=-torch.exp(r(e, n) * 0.5),
                  B=r(b, n, length), C=r(b, n, length), D=r(e), z=r(b, e, length), delta_bias=r(e) * 0.3)
    if not softplus:  # Δ must stay positive without softplus
        inputs["delta"] = inputs["delta"].abs() * 0.3 + 0.01
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    for name, keep in (("D", d), ("z", z), ("delta_bias", bias)):
        if not keep:
            inputs[name] = None
    return inputs


def outputs_and_grads(fn, inputs, dtype, softplus=True, use_last=True, weight_dtype=None, **kw):
    """y, last state and the gradient of every tensor input under a fixed random loss Σ w·y (+ Σ w'·h_L);
    w is rounded to ``weight_dtype`` (default y's dtype), so that the gradient reaching y is the
    same exact number for a float16 run and its float64 truth."""
    leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items() if v is not None}
    y, last = fn(**leaves, delta_softplus=softplus, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(weight_dtype or y.dtype).double()
    loss = (y.double() * w).sum()
    if use_last:
        loss = loss + (last.double() * torch.randn(last.shape, generator=g, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"y": y, "last": last, **{f"d{k}": gr for k, gr in zip(leaves, grads)}}


def n_ops(inputs):
    b, _, length = inputs["u"].shape
    return b * length + inputs["A"].shape[1]


def assert_matches_truth(ours, truth, ops, dtype, what):
    """float32 accumulation bound, plus one rounding to ``dtype`` for low-precision results; y and
    the gradients in ``dtype``, the last state in float32 (float64 for float64 input)."""
    assert ours.keys() == truth.keys(), (sorted(ours), sorted(truth))
    for k in truth:
        expected = (torch.float64 if dtype == torch.float64 else torch.float32) if k == "last" else dtype
        assert ours[k].dtype == expected, f"{what} {k}: {ours[k].dtype} != {expected}"
        if dtype in (torch.float16, torch.bfloat16) and k != "last":
            mag = truth[k].abs().max().item()
            tol = f32_tolerance(ops, mag) + torch.finfo(dtype).eps * mag
            err = (ours[k].double() - truth[k]).abs().max().item()
            assert torch.isfinite(ours[k]).all() and err <= tol, f"{what} {k}: error {err:.3g} > {tol:.3g}"
        else:
            assert_f32_close(ours[k], truth[k], ops, f"{what} {k}")


CASES = {
    # id: (L, chunk, block_e, options)
    "L37-all-options": (37, 16, 2, {}),
    "L1": (1, 16, 2, {}),
    "L7-no-z-D-bias-softplus": (7, 4, 4, dict(d=False, z=False, bias=False, softplus=False)),
    "L20-z-only-blockE1": (20, 8, 1, dict(d=False, bias=False)),
    "L33-default-tiles": (33, None, None, {}),
    "L37-fast-forgetting": (37, 16, 2, dict(delta_scale=4.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_float64_reference(st, case):
    length, chunk, block_e, options = CASES[case]
    inputs = make_inputs(length, seed=length, **options)
    if case.endswith("fast-forgetting"):  # Δ·A up to ~100 per token next to slowly decaying channels
        inputs["A"][:2] *= 20.0
    softplus = options.get("softplus", True)
    truth = outputs_and_grads(selective_scan_sequential, {k: v.double() if v is not None else None
                                                          for k, v in inputs.items()}, torch.float64, softplus)
    ours = outputs_and_grads(st.selective_scan_triton, inputs, torch.float32, softplus, chunk=chunk, block_e=block_e)
    assert_matches_truth(ours, truth, n_ops(inputs), torch.float32, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes(st, dtype):
    """Low-precision inputs are computed in float32 and returned in their dtype; float64 input is
    computed in float32 too (as the fused CPU kernel does), so it is held to the float32 bound."""
    inputs = {k: v.to(dtype) for k, v in make_inputs(20, seed=5).items()}
    truth = outputs_and_grads(selective_scan_sequential, {k: v.double() for k, v in inputs.items()}, torch.float64,
                              weight_dtype=dtype)
    ours = outputs_and_grads(lambda **kw: selective_scan(**kw, backend="triton"), inputs, dtype)
    assert_matches_truth(ours, truth, n_ops(inputs), dtype, str(dtype))


def test_without_last_state_and_through_the_dispatch(st, monkeypatch):
    """backend='triton' and $NNUNET_EXT_SCAN_BACKEND=triton reach the kernel; y alone (no gradient
    flows into the last state)."""
    calls = []
    real = st.selective_scan_triton
    monkeypatch.setattr(st, "selective_scan_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = make_inputs(9, seed=9)
    truth = outputs_and_grads(selective_scan_sequential, {k: v.double() for k, v in inputs.items()},
                              torch.float64, use_last=False)
    monkeypatch.setenv(ENV_VAR, "triton")
    ours = outputs_and_grads(selective_scan, inputs, torch.float32, use_last=False)
    assert calls == [1]
    assert_matches_truth(ours, truth, n_ops(inputs), torch.float32, "env var")
    y = selective_scan(**inputs, delta_softplus=True, backend="triton")
    assert calls == [1, 1] and torch.equal(y, ours["y"])


def test_custom_op_routes_to_triton(st):
    """The inference form used under torch.compile (``torch.ops.nnunet_ext.selective_scan``) runs
    the chosen back-end: the same values as the eager call."""
    inputs = make_inputs(11, seed=11)
    y_op, last_op = torch.ops.nnunet_ext.selective_scan(*(inputs[k] for k in NAMES), True, "triton")
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="triton")
    assert torch.equal(y_op, y) and torch.equal(last_op, last)
    assert_f32_close(y_op, selective_scan_sequential(**{k: v.double() for k, v in inputs.items()},
                                                     delta_softplus=True), n_ops(inputs), "custom op y")


@pytest.mark.parametrize("name", ["layer", "mamba"])
def test_mamba_blocks_same_weights_same_outputs(st, monkeypatch, name):
    """Same checkpoint, same outputs whichever back-end runs: SegMamba's MambaLayer (ToM, three
    token orders) forward, and the Mamba block's output and the gradients of its input and of every
    parameter, with the Triton scan against the float64 block (same weights, N 4, E 16)."""
    factory, shape, length = BLOCKS[name]
    ops = shape[0] * length + 16 + 4
    if name == "layer":
        outs = {}
        for backend, dtype in (("reference", torch.float64), ("triton", torch.float32)):
            torch.manual_seed(3)
            block = factory().to(dtype)
            with monkeypatch.context() as m, torch.no_grad():
                use_scan(m, backend)
                outs[backend] = block(torch.randn(shape).to(dtype))
        assert_f32_close(outs["triton"], outs["reference"], ops, "MambaLayer output")
        return
    truth = _block_outputs_and_grads(name, "reference", torch.float64, monkeypatch)
    ours = _block_outputs_and_grads(name, "triton", torch.float32, monkeypatch)
    assert ours.keys() == truth.keys()
    for k in truth:
        assert_f32_close(ours[k], truth[k], ops, f"{name} triton {k}")


def test_auto_never_sends_cpu_tensors_to_triton(st):
    assert "triton" not in available_backends("cpu")
    assert resolve_backend(torch.zeros(1)) in ("fused", "torch")
    # under the interpreter the GPU probe refuses too: interpreted kernels are not kernel speed
    assert "TRITON_INTERPRET" in backends._probe_triton_call(None).reason


def test_forcing_triton_on_cpu_needs_the_interpreter(st, monkeypatch):
    monkeypatch.setattr(st, "INTERPRET", False)
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        selective_scan(**make_inputs(4), backend="triton")
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        st.selective_scan_triton(**make_inputs(4))


def test_state_size_limit_names_the_fix(st):
    inputs = make_inputs(3, n=st.MAX_DSTATE + 1)
    with pytest.raises(ValueError, match=f"N = {st.MAX_DSTATE + 1} is above {st.MAX_DSTATE}.*backend='torch'"):
        st.selective_scan_triton(**inputs)


def test_vectorised_interpreter_scan_is_tritons_fold(st):
    """The interpreter speed-up computes the very same left fold as Triton's own element-by-element
    evaluation (bit for bit), for the scan's combine and for the kernels' sums."""
    import triton.language as tl
    from triton.runtime import interpreter as ti

    generic_scan, generic_reduce = TRITONS_OWN_FOLDS
    scope = ti._patch_lang(st._fwd_kernel.fn)  # triton.language as inside a kernel
    try:
        _compare_folds(st, ti, tl, generic_scan, generic_reduce)
    finally:
        scope.restore()


def _compare_folds(st, ti, tl, generic_scan, generic_reduce):
    rng = np.random.default_rng(0)
    ops = ti.ScanOps(2, st._combine, False)
    a = ops.to_tensor(rng.random((2, 4, 8), dtype=np.float32), tl.float32)
    x = ops.to_tensor(rng.standard_normal((2, 4, 8), dtype=np.float32), tl.float32)
    fast, slow = ops.generic_scan((a, x)), generic_scan(ops, (a, x))
    assert len(fast) == len(slow) == 2
    for f, s in zip(fast, slow):
        assert f.handle.data.shape == (2, 4, 8) and np.array_equal(f.handle.data, s.handle.data)
    for axis in (0, 1, 2):
        red = ti.ReduceOps(axis, st._add, False)
        fast, slow = red.generic_reduce((x,))[0].handle.data, generic_reduce(red, (x,))[0].handle.data
        assert fast.shape == slow.shape and np.array_equal(fast, slow)
