"""The CPU fakes of mamba-ssm's ``selective_scan_fn`` and causal-conv1d's ``causal_conv1d_fn``
(tests/ops/kernel_fakes.py): each precondition they encode refuses a call that breaks it (naming
the argument and the real check's line), valid calls give the real dtypes, layouts and values, and
the ``cuda`` back-end of nnunet_ext.ops reaches them on CPU tensors."""

import re

import pytest
import torch

from nnunet_ext.ops import backends, causal_conv1d, selective_scan
from nnunet_ext.ops.causal_conv1d import causal_conv1d_torch
from nnunet_ext.ops.reference import selective_scan_sequential
from tests.ops import kernel_fakes as kf

SCAN = kf.make_selective_scan_fn()
CONV = kf.make_causal_conv1d_fn()
FLOATS = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.clear_cache()
    yield
    backends.clear_cache()


def scan_inputs(b=2, e=4, n=3, length=8, dtype=torch.float32, groups=None, requires_grad=False):
    """Valid SegMamba-like arguments: u, delta, z, B, C in ``dtype``; A, D, delta_bias float32."""
    g = torch.Generator().manual_seed(0)
    bc_shape = (b, n, length) if groups is None else (b, groups, n, length)
    t = dict(u=torch.randn(b, e, length, generator=g).to(dtype),
             delta=(torch.randn(b, e, length, generator=g) - 1).to(dtype),
             A=-torch.rand(e, n, generator=g) - 0.5,
             B=torch.randn(*bc_shape, generator=g).to(dtype), C=torch.randn(*bc_shape, generator=g).to(dtype),
             D=torch.rand(e, generator=g), z=torch.randn(b, e, length, generator=g).to(dtype),
             delta_bias=torch.rand(e, generator=g) - 2)
    if requires_grad:
        t = {k: v.requires_grad_() for k, v in t.items()}
    return dict(t, delta_softplus=True)


def conv_inputs(b=2, d=8, length=8, width=4, dtype=torch.float32, wdtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(b, d, length, generator=g).to(dtype),
                weight=torch.randn(d, width, generator=g).to(wdtype), bias=torch.randn(d, generator=g).to(wdtype))


def channel_last(t, pad=0):
    """(B, D, L) with stride(1) == 1: a (B, L, D + pad) tensor's first D channels, transposed."""
    b, d, length = t.shape
    base = torch.zeros(b, length, d + pad, dtype=t.dtype)
    base[..., :d] = t.transpose(1, 2)
    return base[..., :d].transpose(1, 2)


def misaligned(t):
    """``t``'s values in a view whose rows start 1 element past a 16-byte boundary."""
    base = torch.zeros(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype)
    base[..., 1:] = t
    return base[..., 1:]


def _set(fn):
    """mutate(inputs) -> inputs with the entries ``fn(inputs)`` returns replaced."""
    return lambda k: {**k, **fn(k)}


def _cast(names, dtype):
    return _set(lambda k: {n: k[n].to(dtype) for n in names})


# --------------------------------------------------------------------------------- selective_scan_fn
# (case, mutate(valid inputs), error type, message (regex; names the argument), source of the real check)
SCAN_VIOLATIONS = [
    ("u float64", _cast(["u", "delta", "z", "B", "C"], torch.float64), kf.KernelCheckError,
     r"u has dtype torch.float64", "selective_scan.cpp:235"),
    ("A float16", _cast(["A"], torch.float16), kf.KernelCheckError, r"A has dtype torch.float16",
     "selective_scan.cpp:236"),
    ("A float64", _cast(["A"], torch.float64), kf.KernelCheckError, r"A has dtype torch.float64",
     "selective_scan.cpp:236"),
    ("delta dtype differs", _cast(["delta"], torch.bfloat16), kf.KernelCheckError,
     r"delta has dtype torch.bfloat16 but u has torch.float32", "selective_scan.cpp:242"),
    ("variable B not u's dtype", _cast(["B"], torch.float16), kf.KernelCheckError,
     r"B is input-dependent .* must be torch.float32 \(u's dtype\)", "selective_scan.cpp:243"),
    ("variable C not u's dtype", _cast(["C"], torch.bfloat16), kf.KernelCheckError,
     r"C is input-dependent .* must be torch.float32", "selective_scan.cpp:244"),
    ("constant B not A's dtype", _set(lambda k: {"u": k["u"].half(), "delta": k["delta"].half(), "z": k["z"].half(),
                                                 "C": k["C"].half(), "B": torch.randn(4, 3).half()}),
     kf.KernelCheckError, r"B is constant \(dim, N\) with dtype torch.float16, must be torch.float32 \(A's dtype\)",
     "selective_scan.cpp:243"),
    ("A on another device", _set(lambda k: {"A": k["A"].to("meta")}), kf.KernelCheckError,
     r"A is on meta, u on cpu", "selective_scan.cpp:248"),
    ("C on another device", _set(lambda k: {"C": k["C"].to("meta")}), kf.KernelCheckError,
     r"C is on meta", "selective_scan.cpp:250"),
    ("A 1-D", _set(lambda k: {"A": k["A"][:, 0]}), kf.KernelIndexError, r"A must be \(dim, N\)",
     "selective_scan.cpp:259"),
    ("d_state 257", _set(lambda k: {"A": -torch.rand(4, 257), "B": torch.randn(2, 257, 8),
                                    "C": torch.randn(2, 257, 8)}),
     kf.KernelCheckError, r"A has N = A.shape\[1\] = 257 states; the kernel supports at most 256",
     "selective_scan.cpp:262"),
    ("u 4-D", _set(lambda k: {"u": k["u"][None]}), kf.KernelCheckError,
     r"u must be \(batch, dim, seqlen\), got shape \(1, 2, 4, 8\)", "selective_scan.cpp:264"),
    ("delta shorter", _set(lambda k: {"delta": k["delta"][..., :7]}), kf.KernelCheckError,
     r"delta must have shape .* \(2, 4, 8\), got \(2, 4, 7\)", "selective_scan.cpp:265"),
    ("A rows != dim", _set(lambda k: {"A": -torch.rand(5, 3)}), kf.KernelCheckError,
     r"A must have shape \(dim, N\) = \(4, 3\), got \(5, 3\)", "selective_scan.cpp:266"),
    ("constant B shape", _set(lambda k: {"B": torch.randn(4, 2)}), kf.KernelCheckError,
     r"B must have shape \(dim, N\) \(constant\) = \(4, 3\)", "selective_scan.cpp:268"),
    ("B length", _set(lambda k: {"B": torch.randn(2, 3, 9)}), kf.KernelCheckError,
     r"B must have shape \(batch, groups, N, seqlen\) = \(2, 1, 3, 8\), got \(2, 1, 3, 9\)", "selective_scan.cpp:270"),
    ("B states != A's", _set(lambda k: {"B": torch.randn(2, 2, 8)}), kf.KernelCheckError,
     r"B must have shape .* = \(2, 1, 3, 8\)", "selective_scan.cpp:270"),
    ("C groups != B groups", _set(lambda k: {"C": torch.randn(2, 2, 3, 8)}), kf.KernelCheckError,
     r"C must have shape \(batch, groups, N, seqlen\) with B's groups = \(2, 1, 3, 8\)", "selective_scan.cpp:276"),
    ("complex A, B of length L", _set(lambda k: {"A": k["A"].to(torch.complex64)}), kf.KernelCheckError,
     r"B must have shape \(batch, groups, N, 2\*seqlen\) = \(2, 1, 3, 16\)", "selective_scan.cpp:270"),
    ("D float16", _cast(["D"], torch.float16), kf.KernelCheckError,
     r"D has dtype torch.float16; the kernel reads it as float32", "selective_scan.cpp:282"),
    ("D shape", _set(lambda k: {"D": torch.ones(1)}), kf.KernelCheckError,
     r"D must have shape \(dim,\) = \(4,\), got \(1,\)", "selective_scan.cpp:285"),
    ("delta_bias bfloat16", _cast(["delta_bias"], torch.bfloat16), kf.KernelCheckError,
     r"delta_bias has dtype torch.bfloat16", "selective_scan.cpp:290"),
    ("delta_bias strided", _set(lambda k: {"delta_bias": torch.rand(8)[::2]}), kf.KernelCheckError,
     r"delta_bias must be contiguous in its last dimension", "selective_scan.cpp:292"),
    ("delta_bias shape", _set(lambda k: {"delta_bias": torch.rand(4, 1)}), kf.KernelCheckError,
     r"delta_bias must have shape \(dim,\)", "selective_scan.cpp:293"),
    ("z dtype differs", _cast(["z"], torch.float16), kf.KernelCheckError,
     r"z has dtype torch.float16 but u has torch.float32", "selective_scan.cpp:300"),
    ("z on another device", _set(lambda k: {"z": k["z"].to("meta")}), kf.KernelCheckError,
     r"z is on meta", "selective_scan.cpp:301"),
    ("z shape", _set(lambda k: {"z": k["z"][:1]}), kf.KernelCheckError,
     r"z must have shape u's \(batch, dim, seqlen\) = \(2, 4, 8\), got \(1, 4, 8\)", "selective_scan.cpp:303"),
    ("dim over the grid limit", _set(lambda k: {"u": torch.randn(1, 65536, 1), "delta": torch.randn(1, 65536, 1),
                                                "A": -torch.rand(65536, 1), "B": torch.randn(1, 1, 1),
                                                "C": torch.randn(1, 1, 1), "D": None, "z": None, "delta_bias": None}),
     kf.KernelLaunchError, r"u has dim = 65536 channels; .* at most 65535", "selective_scan_fwd_kernel.cuh:322"),
    ("groups do not divide dim", _set(lambda k: {"B": torch.randn(2, 3, 3, 8), "C": torch.randn(2, 3, 3, 8)}),
     kf.KernelLaunchError, r"B/C have 3 groups, which do not divide dim = 4", "selective_scan.cpp:93"),
    ("u rows misaligned", _set(lambda k: {"u": misaligned(torch.randn(2, 4, 128)), "delta": torch.randn(2, 4, 128),
                                          "z": torch.randn(2, 4, 128), "B": torch.randn(2, 3, 128),
                                          "C": torch.randn(2, 3, 128)}),
     kf.KernelLaunchError, r"u: at seqlen 128 \(a multiple of 128\) the kernel reads 16-byte vectors",
     "selective_scan_fwd_kernel.cuh:315"),
]


@pytest.mark.parametrize("mutate, error, message, source",
                         [c[1:] for c in SCAN_VIOLATIONS], ids=[c[0] for c in SCAN_VIOLATIONS])
def test_scan_fake_refuses_each_violation(mutate, error, message, source):
    with pytest.raises(error, match=message) as info:
        SCAN(**mutate(scan_inputs()))
    assert re.search(rf"(^|/){re.escape(source)}\b", info.value.source), info.value.source
    assert isinstance(info.value, kf.KernelContractError)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("groups", [None, 2])
def test_scan_fake_valid_calls_give_the_real_dtypes_and_values(dtype, groups):
    inp = scan_inputs(dtype=dtype, groups=groups, requires_grad=True)
    y, last = SCAN(**inp, return_last_state=True)
    assert y.dtype == dtype and y.shape == (2, 4, 8) and y.stride(-1) == 1
    assert last.dtype == torch.float32 and last.shape == (2, 4, 3) and not last.requires_grad
    # the reference, group by group (channels 0-1 read group 0, channels 2-3 group 1)
    per = 4 // (groups or 1)
    for g in range(groups or 1):
        ch = slice(g * per, (g + 1) * per)
        bc = (lambda t: t[:, g]) if groups else (lambda t: t)
        ref = selective_scan_sequential(inp["u"][:, ch], inp["delta"][:, ch], inp["A"][ch], bc(inp["B"]),
                                        bc(inp["C"]), inp["D"][ch], inp["z"][:, ch], inp["delta_bias"][ch], True)
        torch.testing.assert_close(y[:, ch], ref)
    y.float().square().sum().backward()
    for name in ("u", "delta", "B", "C", "z"):  # input-type gradients, as the extension returns them
        assert inp[name].grad.dtype == dtype and torch.isfinite(inp[name].grad.float()).all(), name
    for name in ("A", "D", "delta_bias"):
        assert inp[name].grad.dtype == torch.float32 and torch.isfinite(inp[name].grad).all(), name


def test_scan_wrapper_makes_strided_inputs_contiguous():
    """selective_scan_fn copies u, delta, B, C, z, D whose last stride is not 1 before the C++
    checks (selective_scan_interface.py:40-51), so those are accepted; delta_bias is not copied."""
    inp = scan_inputs()
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if k in ("u", "delta", "B", "C", "z") else v)
               for k, v in inp.items()}
    assert strided["u"].stride(-1) != 1
    torch.testing.assert_close(SCAN(**strided), SCAN(**inp))
    with pytest.raises(kf.KernelCheckError, match=r"u must be contiguous in its last dimension"):
        kf.check_selective_scan_fwd(strided["u"], inp["delta"], inp["A"], inp["B"][:, None], inp["C"][:, None])


def test_scan_fake_computes_only_what_it_can():
    inp = scan_inputs()
    with pytest.raises(kf.FakeCannotCompute):  # valid for the real kernel (constant B), not computed here
        SCAN(**{**inp, "B": torch.randn(4, 3)})


# --------------------------------------------------------------------------------- causal_conv1d_fn
CONV_VIOLATIONS = [
    ("activation relu", _set(lambda k: {"activation": "relu"}), kf.KernelNotImplementedError,
     r"activation must be None, 'silu' or 'swish', got 'relu'", "causal_conv1d_interface.py:22"),
    ("x 2-D", _set(lambda k: {"x": k["x"][0]}), kf.KernelIndexError, r"x must be \(batch, dim, seqlen\)",
     "causal_conv1d_interface.py:24"),
    ("x float64", _cast(["x"], torch.float64), kf.KernelCheckError, r"x has dtype torch.float64",
     "causal_conv1d.cpp:160"),
    ("weight float64", _cast(["weight", "bias"], torch.float64), kf.KernelCheckError, r"weight has dtype torch.float64",
     "causal_conv1d.cpp:161"),
    ("weight on another device", _set(lambda k: {"weight": k["weight"].to("meta")}), kf.KernelCheckError,
     r"weight is on meta, x on cpu", "causal_conv1d.cpp:164"),
    ("x 4-D", _set(lambda k: {"x": k["x"][None]}), kf.KernelCheckError, r"x must be \(batch, dim, seqlen\), got shape",
     "causal_conv1d.cpp:172"),
    ("nn.Conv1d weight (D, 1, W)", _set(lambda k: {"weight": k["weight"][:, None]}), kf.KernelCheckError,
     r"weight must have shape \(dim, width\) .*squeeze\(1\).* = \(8, 4\), got \(8, 1, 4\)", "causal_conv1d.cpp:173"),
    ("weight rows != dim", _set(lambda k: {"weight": torch.randn(6, 4)}), kf.KernelCheckError,
     r"weight must have shape \(dim, width\)", "causal_conv1d.cpp:173"),
    ("channel-last x, dim 6", _set(lambda k: {"x": channel_last(torch.randn(2, 6, 8)), "weight": torch.randn(6, 4),
                                              "bias": torch.randn(6)}),
     kf.KernelCheckError, r"x is channel-last .* dim = 6 channels", "causal_conv1d.cpp:179"),
    ("channel-last x, stride(2) 12", _set(lambda k: {"x": channel_last(k["x"], pad=4)}), kf.KernelCheckError,
     r"x.stride\(0\) and x.stride\(2\) must be multiples of 8, got \(96, 1, 12\)", "causal_conv1d.cpp:180"),
    ("width 5", _set(lambda k: {"weight": torch.randn(8, 5)}), kf.KernelCheckError,
     r"weight has width 5 .* widths 2 to 4", "causal_conv1d.cpp:182"),
    ("width 1", _set(lambda k: {"weight": torch.randn(8, 1)}), kf.KernelCheckError, r"weight has width 1",
     "causal_conv1d.cpp:182"),
    ("bias dtype != weight dtype", _cast(["bias"], torch.float16), kf.KernelCheckError,
     r"bias has dtype torch.float16 but weight has torch.float32", "causal_conv1d.cpp:186"),
    ("bias shape", _set(lambda k: {"bias": torch.randn(4)}), kf.KernelCheckError,
     r"bias must have shape \(dim,\) = \(8,\), got \(4,\)", "causal_conv1d.cpp:189"),
    ("seq_idx with (B, D, L) x", _set(lambda k: {"seq_idx": torch.zeros(2, 8, dtype=torch.int32)}), kf.KernelCheckError,
     r"seq_idx is only supported with channel-last x", "causal_conv1d.cpp:193"),
    ("seq_idx int64", _set(lambda k: {"x": channel_last(k["x"]), "seq_idx": torch.zeros(2, 8, dtype=torch.int64)}),
     kf.KernelCheckError, r"seq_idx must be int32, got torch.int64", "causal_conv1d.cpp:195"),
    ("seq_idx with initial_states", _set(lambda k: {"seq_idx": torch.zeros(2, 8, dtype=torch.int32),
                                                    "initial_states": torch.zeros(2, 8, 3)}),
     kf.KernelAssertionError, r"initial_states must be None if seq_idx is given", "causal_conv1d_interface.py:28"),
    ("final states of (B, D, L) x", _set(lambda k: {"return_final_states": True}), kf.KernelAssertionError,
     r"return_final_states needs channel-last x \(x.stride\(1\) == 1\)", "causal_conv1d_interface.py:40"),
    ("initial_states with (B, D, L) x", _set(lambda k: {"initial_states": torch.zeros(2, 8, 3)}), kf.KernelCheckError,
     r"initial_states is only supported with channel-last x", "causal_conv1d.cpp:213"),
    ("initial_states dtype", _set(lambda k: {"x": channel_last(k["x"]),
                                             "initial_states": torch.zeros(2, 3, 8).half().transpose(1, 2)}),
     kf.KernelCheckError, r"initial_states has dtype torch.float16 but x has torch.float32", "causal_conv1d.cpp:215"),
    ("initial_states width", _set(lambda k: {"x": channel_last(k["x"]),
                                             "initial_states": torch.zeros(2, 4, 8).transpose(1, 2)}),
     kf.KernelCheckError, r"initial_states must have shape \(batch, dim, width - 1\) = \(2, 8, 3\)",
     "causal_conv1d.cpp:217"),
    ("dim over the grid limit", _set(lambda k: {"x": torch.randn(1, 65536, 2), "weight": torch.randn(65536, 2),
                                                "bias": None}),
     kf.KernelLaunchError, r"x has dim = 65536 channels; .* at most 65535", "causal_conv1d_fwd.cu:145"),
    ("x rows misaligned", _set(lambda k: {"x": misaligned(k["x"])}), kf.KernelLaunchError,
     r"x: at seqlen 8 \(a multiple of 4\) the kernel reads 16-byte vectors", "causal_conv1d_fwd.cu:142"),
]


@pytest.mark.parametrize("mutate, error, message, source",
                         [c[1:] for c in CONV_VIOLATIONS], ids=[c[0] for c in CONV_VIOLATIONS])
def test_conv_fake_refuses_each_violation(mutate, error, message, source):
    with pytest.raises(error, match=message) as info:
        CONV(**mutate(dict(conv_inputs(), activation="silu")))
    assert re.search(rf"(^|/){re.escape(source)}\b", info.value.source), info.value.source
    assert isinstance(info.value, kf.KernelContractError)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("wdtype", FLOATS)
def test_conv_fake_valid_calls_give_the_real_dtypes_and_values(dtype, wdtype):
    """Any of the three input types with any of the three weight types (all nine are compiled);
    the output has x's dtype, the weight gradient the weight's."""
    inp = {k: v.requires_grad_() for k, v in conv_inputs(dtype=dtype, wdtype=wdtype).items()}
    y = CONV(**inp, activation="silu")
    assert y.dtype == dtype and y.shape == (2, 8, 8)
    ref = causal_conv1d_torch(inp["x"].float(), inp["weight"].float(), inp["bias"].float(), "silu").to(dtype)
    torch.testing.assert_close(y, ref)
    y.float().sum().backward()
    assert inp["x"].grad.dtype == dtype and inp["weight"].grad.dtype == wdtype and inp["bias"].grad.dtype == wdtype


def test_conv_fake_channel_last_layout_states_and_strided_x():
    inp = conv_inputs()
    ref = causal_conv1d_torch(inp["x"], inp["weight"], inp["bias"])
    # x strided along both axes: the wrapper copies it (causal_conv1d_interface.py:24-25)
    wide = torch.zeros(2, 16, 16)
    wide[:, ::2, ::2] = inp["x"]
    torch.testing.assert_close(CONV(wide[:, ::2, ::2], inp["weight"], inp["bias"]), ref)
    # channel-last x: output keeps the layout (empty_like), final states are the last width-1 tokens
    x_cl = channel_last(inp["x"])
    y, final = CONV(x_cl, inp["weight"], inp["bias"], return_final_states=True)
    torch.testing.assert_close(y, ref)
    assert y.stride(1) == 1 and final.shape == (2, 8, 3) and final.stride(1) == 1
    torch.testing.assert_close(final, inp["x"][..., -3:])
    # initial states continue a sequence: conv(x[:, :, 4:]) with x[:, :, 1:4] as the state
    init = channel_last(inp["x"][..., 1:4].contiguous())
    tail = channel_last(inp["x"][..., 4:].contiguous())
    torch.testing.assert_close(CONV(tail, inp["weight"], inp["bias"], initial_states=init), ref[..., 4:])


# --------------------------------------------------------------------------------- the route
def test_cuda_backend_on_cpu_tensors_reaches_the_fakes(monkeypatch):
    calls = kf.route_cuda_backend_to_fakes(monkeypatch)
    assert backends.resolve_backend(torch.zeros(1)) == "cuda"
    inp = scan_inputs()
    y = selective_scan(**inp)
    torch.testing.assert_close(y, selective_scan_sequential(**inp))
    c = conv_inputs()
    out = causal_conv1d(c["x"], c["weight"], c["bias"], activation="silu")
    torch.testing.assert_close(out, causal_conv1d_torch(c["x"], c["weight"], c["bias"], "silu"))
    assert len(calls["scan"]) == 1 and len(calls["conv"]) == 1 and calls["conv"][0]["activation"] == "silu"
    # a call the kernel refuses fails as it would on a GPU: the dispatch does not convert float64
    with pytest.raises(kf.KernelCheckError, match="u has dtype torch.float64"):
        selective_scan(**{k: v.double() if k in ("u", "delta", "z", "B", "C") else v for k, v in inp.items()})


@pytest.mark.parametrize("op", ["scan", "conv"])
def test_availability_probe_call_meets_the_contract(monkeypatch, op):
    """backends._run_cuda_probe's own tiny call must be one the real kernel accepts (else every
    GPU machine would report the kernel as broken)."""
    fake = kf.make_selective_scan_fn() if op == "scan" else kf.make_causal_conv1d_fn()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    backends._run_cuda_probe(op, fake, torch.device("cpu"))



# --------------------------------------------------------------------------------- the real kernels
def _real_kernels():
    """(selective_scan_fn, causal_conv1d_fn) of the installed packages, or skip: only a GPU machine
    with the ``[cuda]`` extra can hold the fakes against the real thing."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    backends.clear_cache()
    scan, conv = backends.mamba_ssm_scan(), backends.causal_conv1d_cuda_fn()
    if scan is None or conv is None:
        pytest.skip("needs mamba-ssm and causal-conv1d with their CUDA ops (pip install '.[cuda]')")
    return scan, conv


def same_layout_on(t, device):
    """``t`` on ``device`` with the same sizes, strides and storage offset (``.to`` would make
    non-dense views contiguous); other values and meta tensors as they are."""
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
        return t
    n = t.untyped_storage().nbytes() // t.element_size()
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), 0, (n,), (1,))
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset()).requires_grad_(t.requires_grad)


def test_same_layout_on_keeps_strides_and_offsets():
    t = misaligned(torch.randn(2, 3, 8))
    c = same_layout_on(t, "cpu")
    assert c.stride() == t.stride() and c.storage_offset() == t.storage_offset() and torch.equal(c, t)


_BUILTIN = [RuntimeError, IndexError, AssertionError, NotImplementedError]


def _real_case(error):
    if issubclass(error, kf.KernelLaunchError):
        pytest.skip("a bad launch or misaligned read poisons the CUDA context for the rest of the session")
    return next(b for b in _BUILTIN if issubclass(error, b))


@pytest.mark.parametrize("mutate, error, message, source",
                         [c[1:] for c in SCAN_VIOLATIONS], ids=[c[0] for c in SCAN_VIOLATIONS])
def test_real_selective_scan_refuses_what_the_fake_refuses(mutate, error, message, source):
    scan, _ = _real_kernels()
    expected = _real_case(error)
    inputs = {k: same_layout_on(v, "cuda") for k, v in mutate(scan_inputs()).items()}
    with pytest.raises(expected):
        scan(**inputs)


@pytest.mark.parametrize("mutate, error, message, source",
                         [c[1:] for c in CONV_VIOLATIONS], ids=[c[0] for c in CONV_VIOLATIONS])
def test_real_causal_conv1d_refuses_what_the_fake_refuses(mutate, error, message, source):
    _, conv = _real_kernels()
    expected = _real_case(error)
    inputs = {k: same_layout_on(v, "cuda") for k, v in mutate(dict(conv_inputs(), activation="silu")).items()}
    with pytest.raises(expected):
        conv(**inputs)


@pytest.mark.parametrize("dtype", FLOATS)
def test_real_kernels_agree_with_the_fakes(dtype):
    scan, conv = _real_kernels()
    inp = scan_inputs(length=300, dtype=dtype)
    fake_y, fake_last = SCAN(**inp, return_last_state=True)
    y, last = scan(**{k: same_layout_on(v, "cuda") for k, v in inp.items()}, return_last_state=True)
    assert y.dtype == fake_y.dtype and last.dtype == fake_last.dtype and last.shape == fake_last.shape
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.cpu(), fake_y, **tol)
    torch.testing.assert_close(last.cpu(), fake_last, **tol)
    c = conv_inputs(length=300, dtype=dtype)
    out = conv(**{k: same_layout_on(v, "cuda") for k, v in c.items()}, activation="silu")
    assert out.dtype == dtype and out.stride() == CONV(**c, activation="silu").stride()
    torch.testing.assert_close(out.cpu(), CONV(**c, activation="silu"), **tol)
