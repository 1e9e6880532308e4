"""torch.compile: dynamo never traces into the selective scan or the causal conv.

Inference (no gradient needed): the ops are opaque custom ops, registered correctly
(torch.library.opcheck: schema, fake implementation, AOT dispatch); a compiled caller has no graph
break (fullgraph=True), gives the eager values and reads the back-end when it runs, not when it
was traced. Training (gradients needed): each call runs eagerly behind a graph break and the
gradients are the eager ones. These use the ``aot_eager`` compiler (dynamo + AOTAutograd + fake
tensors, no code generation); inductor runs on blocks and networks are in
tests/blocks/test_mamba_compile.py.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from nnunet_ext.ops import (ENV_VAR, BackendUnavailableError, available_backends, backends, causal_conv1d,
                            selective_scan)

ss = importlib.import_module("nnunet_ext.ops.selective_scan")
CPU_BACKENDS = available_backends("cpu")
BACKEND_ARGS = [None, *CPU_BACKENDS]


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def scan_inputs(b=2, e=3, n=4, length=37, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(b, e, length), delta=r(b, e, length), A=-torch.exp(r(e, n) * 0.5), B=r(b, n, length),
             C=r(b, n, length), D=r(e), z=r(b, e, length), delta_bias=r(e) * 0.3)
    return {k: v.requires_grad_(grad) for k, v in x.items()}


# --------------------------------------------------------------------------- op registration

@pytest.mark.parametrize("backend", BACKEND_ARGS)
@pytest.mark.parametrize("optional", [True, False], ids=["D+z+bias", "plain"])
def test_scan_op_passes_opcheck(backend, optional):
    x = scan_inputs(length=9)
    if not optional:
        x.update(D=None, z=None, delta_bias=None)
    torch.library.opcheck(torch.ops.nnunet_ext.selective_scan.default, (*x.values(), optional, backend))


@pytest.mark.parametrize("with_bias, activation", [(True, "silu"), (False, None)])
def test_conv_op_passes_opcheck(with_bias, activation):
    x, w = torch.randn(2, 3, 7), torch.randn(3, 4)
    b = torch.randn(3) if with_bias else None
    torch.library.opcheck(torch.ops.nnunet_ext.causal_conv1d.default, (x, w, b, activation, None))


def test_ops_have_no_backward_and_say_what_to_call():
    x = scan_inputs(grad=True)
    y, _ = torch.ops.nnunet_ext.selective_scan(*x.values(), True, None)
    with pytest.raises(RuntimeError, match=r"call nnunet_ext\.ops\.selective_scan, which runs the differentiable"):
        y.sum().backward()
    c = torch.ops.nnunet_ext.causal_conv1d(x["u"], torch.randn(3, 4), None, None, None)
    with pytest.raises(RuntimeError, match=r"call nnunet_ext\.ops\.causal_conv1d"):
        c.sum().backward()


def test_ops_give_shapes_on_the_meta_device():
    x = {k: v.to("meta") for k, v in scan_inputs().items()}
    y, last = torch.ops.nnunet_ext.selective_scan(*x.values(), True, None)
    assert y.device.type == last.device.type == "meta"
    assert y.shape == (2, 3, 37) and last.shape == (2, 3, 4) and last.dtype == torch.float32
    c = torch.ops.nnunet_ext.causal_conv1d(torch.empty(1, 4, 12, device="meta"), torch.empty(4, 4, device="meta"),
                                           None, "silu", None)
    assert c.device.type == "meta" and c.shape == (1, 4, 12)


# --------------------------------------------------------------------------- compiled callers

def ssm_like(u, delta, A, B, C, D, z, delta_bias, conv_w, backend):
    """conv -> scan, the way a Mamba mixer chains the two ops, plus ops around them."""
    x = causal_conv1d(u * 2.0, conv_w, activation="silu", backend=backend)
    y, last = selective_scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True,
                             backend=backend)
    return y.tanh(), last.square()


@pytest.mark.parametrize("backend", BACKEND_ARGS)
def test_compiled_inference_has_no_graph_break_and_equals_eager(backend):
    x = scan_inputs()
    conv_w = torch.randn(3, 4)
    compiled = torch.compile(ssm_like, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        y0, l0 = ssm_like(*x.values(), conv_w, backend)
        y1, l1 = compiled(*x.values(), conv_w, backend)
    # the compiled graph runs the same eager code inside the ops: the same values
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKEND_ARGS)
def test_compiled_training_equals_eager(backend):
    x = scan_inputs(grad=True)
    conv_w = torch.randn(3, 4, requires_grad=True)
    leaves = [*x.values(), conv_w]
    compiled = torch.compile(ssm_like, backend="aot_eager")
    results = []
    for fn in (ssm_like, compiled):
        y, last = fn(*leaves, backend)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1])).sum() + last.sum(), leaves)
        results.append((y, last, grads))
    (y0, l0, g0), (y1, l1, g1) = results
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(l1, l0)
    for name, a, b in zip([*x, "conv_w"], g1, g0):
        torch.testing.assert_close(a, b, msg=f"d{name}")


def test_compiled_training_breaks_the_graph_only_around_the_ops():
    explained = torch._dynamo.explain(ssm_like)(*scan_inputs(grad=True).values(),
                                                torch.randn(3, 4, requires_grad=True), None)
    assert explained.graph_break_count >= 1
    for r in explained.break_reasons:  # only at the eager dispatch of the ops
        assert "torch.compiler.disable" in r.reason and "_dispatch" in r.reason, r.reason
        assert r.user_stack[-1].name in ("causal_conv1d", "selective_scan"), r.user_stack
    with torch.no_grad():
        torch._dynamo.reset()
        explained = torch._dynamo.explain(ssm_like)(*scan_inputs().values(), torch.randn(3, 4), None)
    assert explained.graph_break_count == 0


def test_compiled_inference_reads_the_backend_when_it_runs(monkeypatch):
    """One trace; the environment variable is honoured call by call, with no recompilation."""
    traces = []

    def counting(gm, example_inputs):
        traces.append(gm)
        return gm.forward

    ran = []
    orig = ss.selective_scan_torch
    monkeypatch.setattr(ss, "selective_scan_torch", lambda *a, **k: ran.append("torch") or orig(*a, **k))
    x = scan_inputs()
    conv_w = torch.randn(3, 4)
    compiled = torch.compile(ssm_like, backend=counting, fullgraph=True)
    with torch.no_grad():
        expected = ssm_like(*x.values(), conv_w, "torch")[0]
        for name in ("torch", "cuda", "torch"):
            monkeypatch.setenv(ENV_VAR, name)
            ran.clear()
            if name == "cuda":  # traced under 'torch'; a forced 'cuda' refuses the CPU tensors when it runs
                with pytest.raises(BackendUnavailableError, match="'cuda' needs CUDA tensors"):
                    compiled(*x.values(), conv_w, None)
                assert ran == []
                continue
            y = compiled(*x.values(), conv_w, None)[0]
            assert ran == ["torch"]
            torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    assert len(traces) == 1
    graph_ops = {str(n.target).removesuffix(".default") for n in traces[0].graph.nodes if n.op == "call_function"}
    assert {"nnunet_ext.selective_scan", "nnunet_ext.causal_conv1d"} <= graph_ops, graph_ops


def test_compiled_call_still_warns_about_a_slow_fallback(monkeypatch):
    """The back-end is resolved inside the op, so the no-silent-slow-path message survives compile."""
    monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_fused", None)
    backends.clear_cache()
    compiled = torch.compile(ssm_like, backend="aot_eager", fullgraph=True)
    with pytest.warns(backends.SlowBackendWarning, match="fused CPU kernel"):
        with torch.no_grad():
            compiled(*scan_inputs().values(), torch.randn(3, 4), None)
    backends.clear_cache()
