"""Every CPU back-end of the selective scan computes the same function: forward, last state and all
gradients, on fixed inputs.

- float64: 'torch' and the sequential reference (:mod:`nnunet_ext.ops.reference`) both compute in
  float64 and agree to 1e-10 relative.
- float32: 'fused' and 'torch' each match the float64 truth (the reference in float64 on the same
  float32 values) within a tolerance derived from float32 accumulation
  (:mod:`tests.ops.precision`).
- The fused numba kernel has no float64 path (it rounds every input to float32 and computes in
  float32), so it is compared in float32 only.
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from nnunet_ext.ops import available_backends, selective_scan
from nnunet_ext.ops.reference import selective_scan_sequential
from tests.ops.precision import EPS32, assert_f32_close, assert_f64_close

ss = importlib.import_module("nnunet_ext.ops.selective_scan")
T = ss.BLOCK
CPU_BACKENDS = available_backends("cpu")  # 'fused' (when numba works), 'torch'
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
LENGTHS = [1, 7, T + 1, 3 * T + 5, 300]


def fixed_inputs(length, b=2, e=3, n=4, seed=0, delta_scale=1.0):
    """Mamba-like float32 inputs (Δ_raw any sign: softplus makes it positive); float32 values, so
    the float64 truth sees exactly the same numbers."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(b, e, length), delta=r(b, e, length) * delta_scale, A=-torch.exp(r(e, n) * 0.5),
                B=r(b, n, length), C=r(b, n, length), D=r(e), z=r(b, e, length), delta_bias=r(e) * 0.3)


def outputs_and_grads(backend, inputs, dtype, softplus=True):
    """y, last state and the gradient of every input under a fixed random loss, all as a dict;
    ``backend`` is a back-end name or ``"reference"`` (the sequential scan, called directly)."""
    scan = selective_scan_sequential if backend == "reference" else functools.partial(selective_scan, backend=backend)
    leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
    y, last = scan(**leaves, delta_softplus=softplus, return_last_state=True)
    g = torch.Generator().manual_seed(1234)
    loss = ((y * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)).sum()
            + (last * torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)).sum())
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"y": y, "last": last, **{f"d{k}": gr for k, gr in zip(leaves, grads)}}


def n_ops(inputs):
    """Chained float32 operations behind one output or gradient: up to B*L tokens of recurrence
    (and of batch/token sums for dA, dD, d delta_bias) plus the N-term state sum."""
    b, _, length = inputs["u"].shape
    return b * length + inputs["A"].shape[1]


@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw"])
@pytest.mark.parametrize("length", LENGTHS)
def test_float64_torch_equals_reference(length, softplus):
    inputs = fixed_inputs(length, seed=length)
    if not softplus:  # Δ must stay positive without softplus
        inputs.update(delta=inputs["delta"].abs() * 0.3 + 0.01, delta_bias=inputs["delta_bias"].abs())
    ours = outputs_and_grads("torch", inputs, torch.float64, softplus)
    truth = outputs_and_grads("reference", inputs, torch.float64, softplus)
    assert set(ours) == set(truth) == {"y", "last", *(f"d{k}" for k in NAMES)}
    for k in truth:
        assert_f64_close(ours[k], truth[k], f"L={length} {k}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length", LENGTHS)
def test_float32_backends_match_float64_truth(backend, length):
    inputs = fixed_inputs(length, seed=100 + length)
    truth = outputs_and_grads("reference", inputs, torch.float64)
    ours = outputs_and_grads(backend, inputs, torch.float32)
    assert ours["y"].dtype == torch.float32 and ours["last"].dtype == torch.float32
    for k in truth:
        assert ours[k].dtype == torch.float32, k
        assert_f32_close(ours[k], truth[k], n_ops(inputs), f"{backend} L={length} {k}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_backends_match_float64_truth_fast_forgetting(backend):
    """Δ·A up to ~100 per token (states forget at once) next to slowly decaying channels."""
    inputs = fixed_inputs(3 * T + 5, e=4, seed=7, delta_scale=4.0)
    inputs["A"][:2] *= 20.0
    truth = outputs_and_grads("reference", inputs, torch.float64)
    ours = outputs_and_grads(backend, inputs, torch.float32)
    for k in truth:
        assert_f32_close(ours[k], truth[k], n_ops(inputs), f"{backend} {k}")


@pytest.mark.skipif("fused" not in CPU_BACKENDS, reason="numba missing or the fused kernel does not compile")
def test_fused_kernel_has_no_float64_path():
    """float64 input: the fused kernel returns float64 tensors computed in float32 from the
    float32-rounded values -- the float32 result (to the last bit; its batch sums of dA, dD and
    d delta_bias are accumulated in float64 and only rounded differently) -- which is why it is
    compared in float32 only."""
    inputs = fixed_inputs(T + 1, seed=3)
    from64 = outputs_and_grads("fused", inputs, torch.float64)
    from32 = outputs_and_grads("fused", inputs, torch.float32)
    for k in from32:
        assert from64[k].dtype == torch.float64, k
        if k in ("dA", "dD", "ddelta_bias"):
            torch.testing.assert_close(from64[k], from32[k].double(), rtol=EPS32, atol=0, msg=k)
        else:
            assert torch.equal(from64[k], from32[k].double()), k
