"""selective_scan: every CPU back-end equals the plain sequential reference (values and gradients).

Tolerance: max |ours - reference| <= 1e-4 * max |reference|, per output and per gradient.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.ops import available_backends, selective_scan
from nnunet_ext.ops.reference import selective_scan_sequential

ss = importlib.import_module("nnunet_ext.ops.selective_scan")  # the module (the name is shadowed)
T = ss.BLOCK
BACKENDS = available_backends("cpu")
RTOL = 1e-4


def make_inputs(b=2, e=3, n=4, length=T, seed=0, delta_scale=0.5, a_max=4.0, dtype=torch.float32):
    """Mamba-like inputs: A < 0, Δ > 0 (before softplus), B/C/u/z standard normal."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(b, e, length), delta=torch.rand(b, e, length, generator=g, dtype=dtype) * delta_scale,
        A=-(torch.rand(e, n, generator=g, dtype=dtype) * a_max + 0.05),
        B=r(b, n, length), C=r(b, n, length), D=r(e), z=r(b, e, length),
        delta_bias=r(e) * 0.1)


def close(ours, ref, what=""):
    err = (ours.double() - ref.double()).abs().max().item()
    scale = max(ref.double().abs().max().item(), 1e-30)
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} > {RTOL} x max |ref| {scale:.3g}"


def run_both(fn_ours, fn_ref, inputs, kwargs, grad_names):
    """Outputs and gradients (w.r.t. ``grad_names``) of both functions under the same random loss."""
    results = []
    for fn in (fn_ours, fn_ref):
        leaves = {k: (v.clone().requires_grad_(k in grad_names) if torch.is_tensor(v) else v)
                  for k, v in inputs.items()}
        out = fn(**leaves, **kwargs)
        y, last = out if kwargs.get("return_last_state") else (out, None)
        g = torch.Generator().manual_seed(123)
        loss = (y * torch.randn(y.shape, generator=g)).sum()
        if last is not None:
            loss = loss + (last * torch.randn(last.shape, generator=g)).sum()
        grads = torch.autograd.grad(loss, [leaves[k] for k in grad_names])
        results.append((y, last, dict(zip(grad_names, grads))))
    return results


def check(backend, inputs, **kwargs):
    used = {k: v for k, v in inputs.items() if v is not None}
    grad_names = list(used)
    (y1, l1, g1), (y2, l2, g2) = run_both(
        lambda **kw: selective_scan(**kw, backend=backend), selective_scan_sequential, used, kwargs, grad_names)
    assert y1.dtype == inputs["u"].dtype and y1.shape == inputs["u"].shape
    close(y1, y2, "y")
    if l1 is not None:
        assert l1.shape == l2.shape
        close(l1, l2, "last state")
    for k in grad_names:
        close(g1[k], g2[k], f"d{k}")


# --------------------------------------------------------------------------- equivalence table

LENGTHS = [1, 7, T, T + 1, 3 * T + 5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("with_d_z", [True, False], ids=["D+z", "plain"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw"])
def test_matches_reference(backend, length, with_d_z, softplus):
    inputs = make_inputs(length=length, seed=length)
    if not with_d_z:
        inputs.update(D=None, z=None)
    if not softplus:
        inputs.update(delta_bias=None)
    check(backend, inputs, delta_softplus=softplus, return_last_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_4096(backend):
    # small E keeps the sequential reference quick; Δ·A small enough that states live ~100 tokens
    inputs = make_inputs(b=1, e=2, n=4, length=4096, seed=7, delta_scale=0.05, a_max=1.0)
    inputs["delta_bias"] = None  # without softplus a negative bias would make Δ < 0: exp growth
    check(backend, inputs, delta_softplus=False, return_last_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_bias_without_softplus(backend):
    check(backend, make_inputs(length=2 * T + 3, seed=3), delta_softplus=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_large_delta_a_is_exact_and_finite(backend, seed):
    """Δ·A up to ~100 per token: states forget at once; no overflow, same values as the loop."""
    inputs = make_inputs(length=3 * T + 5, seed=seed, delta_scale=6.0, a_max=16.0)
    check(backend, inputs, delta_softplus=True, return_last_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_decay_rows(backend):
    """Some channels forget fast, others barely decay: both regimes in one call."""
    inputs = make_inputs(b=1, e=4, n=8, length=5 * T + 3, seed=5)
    inputs["delta"][:, :2] *= 20.0
    inputs["A"][2:] *= 0.01
    check(backend, inputs, delta_softplus=False, return_last_state=True)


def test_return_last_state_shape():
    inputs = make_inputs(length=9)
    y, h = selective_scan(**inputs, return_last_state=True)
    assert y.shape == (2, 3, 9) and h.shape == (2, 3, 4) and h.dtype == torch.float32


# --------------------------------------------------------------------------- torch back-end internals

@pytest.mark.parametrize("segment_elems", [1, 2000])
@pytest.mark.parametrize("length", [T + 1, 5 * T + 3])
def test_torch_backend_across_segments(monkeypatch, segment_elems, length):
    """The sequence is cut into segments (1 and 2 blocks each); the state crosses them."""
    monkeypatch.setattr(ss, "SEGMENT_ELEMS", segment_elems)
    monkeypatch.setattr(ss, "MAX_SEGMENTS", 10_000)
    check("torch", make_inputs(length=length, seed=length), delta_softplus=True, return_last_state=True)


@pytest.mark.parametrize("block", [1, 2, 5, 64])
def test_torch_backend_other_block_sizes(block):
    check("torch", make_inputs(length=70, seed=block), delta_softplus=True, return_last_state=True)
    inputs = make_inputs(length=70, seed=block)
    y = ss.selective_scan_torch(**inputs, delta_softplus=True, block=block)
    close(y, selective_scan_sequential(**inputs, delta_softplus=True), f"block {block}")


def test_torch_backend_fast_and_slow_forgetting_segments(monkeypatch):
    """Large Δ only in the second half, one block per segment: segments whose states forget
    within a token hand the state to slowly decaying ones and back."""
    monkeypatch.setattr(ss, "SEGMENT_ELEMS", 1)
    monkeypatch.setattr(ss, "MAX_SEGMENTS", 10_000)
    inputs = make_inputs(b=1, e=3, n=4, length=6 * T + 3, seed=10, delta_scale=0.2)
    inputs["delta"][..., 3 * T:] *= 50.0
    check("torch", inputs, delta_softplus=False, return_last_state=True)


def test_torch_backend_gradcheck_float64():
    """The hand-written backward equals finite differences (float64 runs in float64)."""
    inputs = make_inputs(b=1, e=2, n=3, length=11, seed=4, dtype=torch.float64, delta_scale=2.0)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    args = tuple(inputs[k].requires_grad_() for k in names)

    def fn(*a):
        y, h = ss.selective_scan_torch(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True,
                                       return_last_state=True, block=4)
        return y, h

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


def test_torch_backend_no_token_loop_or_quadratic_tensor(monkeypatch):
    """Work is organised in blocks: the carry loop runs L/T times, and no tensor is L x L."""
    calls = []
    orig = ss._carry
    monkeypatch.setattr(ss, "_carry", lambda p, g, h0: calls.append(p.shape[2]) or orig(p, g, h0))
    inputs = make_inputs(b=1, e=2, n=4, length=40 * T)
    ss.selective_scan_torch(**inputs)
    assert sum(calls) == 40


@pytest.mark.parametrize("segment_elems", [1, ss.SEGMENT_ELEMS], ids=["one-block-segments", "default"])
def test_torch_backend_never_reads_values_back_to_the_host(monkeypatch, segment_elems):
    """No .item() / .tolist() / bool(tensor) / data-dependent shape per call (each would stall a
    GPU): under FakeTensorMode tensors have no values and any such step raises, yet forward and
    backward of the torch back-end run through and give the right shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(ss, "SEGMENT_ELEMS", segment_elems)
    monkeypatch.setattr(ss, "MAX_SEGMENTS", 10_000)
    mode = FakeTensorMode()
    real = make_inputs(length=3 * T + 5, seed=14)
    fake = {k: mode.from_tensor(v).requires_grad_() for k, v in real.items()}
    with mode:
        y, last = selective_scan(**fake, delta_softplus=True, return_last_state=True, backend="torch")
        grads = torch.autograd.grad((y * y).sum() + last.sum(), list(fake.values()))
    assert type(y).__name__ == "FakeTensor"
    assert y.shape == real["u"].shape and last.shape == (2, 3, 4) and y.dtype == last.dtype == torch.float32
    assert [tuple(g.shape) for g in grads] == [tuple(v.shape) for v in real.values()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_no_device_sync_on_cuda():
    inputs = {k: v.cuda().requires_grad_() for k, v in make_inputs(length=5 * T + 3, seed=15).items()}
    y = selective_scan(**inputs, delta_softplus=True, backend="torch")  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = selective_scan(**inputs, delta_softplus=True, backend="torch")
        torch.autograd.grad(y.square().sum(), list(inputs.values()))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = selective_scan_sequential(**{k: v.detach().cpu() for k, v in inputs.items()}, delta_softplus=True)
    close(y.detach().cpu(), ref, "cuda y")


# --------------------------------------------------------------------------- dtypes, autocast, devices

@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_no_nan_and_dtype(backend):
    inputs = make_inputs(b=1, e=8, n=16, length=3 * T + 5, seed=2)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = F.linear(leaves["u"].transpose(1, 2), torch.eye(8)).transpose(1, 2)  # bf16 under autocast
        assert u.dtype == torch.bfloat16
        y = selective_scan(u, leaves["delta"].bfloat16(), leaves["A"], leaves["B"].bfloat16(),
                           leaves["C"].bfloat16(), leaves["D"], leaves["z"].bfloat16(),
                           leaves["delta_bias"], delta_softplus=True, backend=backend)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all()
    y.float().square().mean().backward()
    for k, v in leaves.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
    ref = selective_scan_sequential(**inputs, delta_softplus=True)
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()  # bf16 inputs/outputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_inside_autocast_stays_float32(backend):
    """Calling backward() inside the autocast region must not make the gradients bf16-accurate."""
    inputs = make_inputs(length=2 * T + 3, seed=8)
    grads = []
    for amp in (False, True):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = selective_scan(**leaves, delta_softplus=True, backend=backend)
            (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        grads.append(leaves)
    for k in inputs:
        close(grads[1][k].grad, grads[0][k].grad, f"d{k} under autocast")


def test_bf16_inputs_torch_backend_computes_float32():
    inputs = make_inputs(length=50, seed=6)
    bf = {k: v.bfloat16() for k, v in inputs.items()}
    y = selective_scan(**bf, delta_softplus=True, backend="torch")
    ref = selective_scan_sequential(**{k: v.float() for k, v in bf.items()}, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    close(y.float(), ref.to(torch.bfloat16).float(), "bf16")  # only the final rounding differs


def test_meta_device_shapes_only():
    inputs = {k: v.to("meta") for k, v in make_inputs(length=100).items()}
    y, h = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert y.device.type == "meta" and y.shape == (2, 3, 100) and h.shape == (2, 3, 4)


def test_no_grad_inference():
    inputs = make_inputs(length=3 * T + 5)
    with torch.no_grad():
        y = selective_scan(**inputs, delta_softplus=True, backend="torch")
    close(y, selective_scan_sequential(**inputs, delta_softplus=True), "no_grad")


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, message", [
    (dict(u=torch.zeros(2, 3)), "u must be"),
    (dict(delta=torch.zeros(2, 3, 5)), "delta must have u's shape"),
    (dict(A=torch.zeros(4, 4)), "A must be real"),
    (dict(B=torch.zeros(2, 5, 9)), "B must be input-dependent"),
    (dict(C=torch.zeros(3, 4)), "C must be input-dependent"),
    (dict(D=torch.zeros(4)), "D must be"),
    (dict(z=torch.zeros(2, 3, 8)), "z must have"),
    (dict(delta_bias=torch.zeros(3, 1)), "delta_bias must be"),
])
def test_bad_shapes_name_the_argument(change, message):
    inputs = make_inputs(length=9)
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="auto, cuda, triton, fused, torch$"):
        selective_scan(**make_inputs(length=4), backend="gpu")


# --------------------------------------------------------------------------- mamba-ssm's own reference

def _mamba_ref():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    except Exception:  # not installed, or installed without its CUDA op (it imports selective_scan_cuda)
        return None
    return selective_scan_ref


@pytest.mark.skipif(_mamba_ref() is None, reason="mamba-ssm's selective_scan_ref is not importable")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [1, T + 1, 3 * T + 5])
def test_matches_mamba_ssm_selective_scan_ref(backend, length):
    ref = _mamba_ref()
    inputs = make_inputs(length=length, seed=length + 100)
    names = list(inputs)
    (y1, l1, g1), (y2, l2, g2) = run_both(
        lambda **kw: selective_scan(**kw, backend=backend), ref, inputs,
        dict(delta_softplus=True, return_last_state=True), names)
    close(y1, y2, "y")
    close(l1, l2, "last state")
    for k in names:
        close(g1[k], g2[k], f"d{k}")
