"""Timing and peak memory of selective-scan implementations on the same inputs (``nnunet-ext benchmark-scan``).

Methods (each skipped with a note when it cannot run here):

- ``torch``: our blocked PyTorch scan (:func:`nnunet_ext.ops.selective_scan.selective_scan_torch`);
  ``torch@T`` runs it with blocks of T tokens (for choosing the block size).
- ``fused``: our numba CPU kernel (:mod:`nnunet_ext.ops.scan_fused`), CPU only.
- ``cuda``: mamba-ssm's ``selective_scan_fn`` kernel, CUDA only.
- ``reference``: mamba-ssm's ``selective_scan_ref`` when it imports; otherwise ``loop_reference``, our stand-in
  with the same structure (exp(Δ⊗A) and Δ·B·u materialised as (B, E, L, N), one Python step per
  token indexing them, autograd through it -- which is why its backward grows with L²).
- ``mambapy``: the ``mambapy`` package's Blelloch parallel scan ``mambapy.pscan.pscan``, wrapped
  the way mambapy's own Mamba block uses it (exp(Δ⊗A) and Δ·B·u as (B, L, E, N), y = hs @ C).

Every method computes the same thing: ``y = (scan + D·u) · silu(z)`` with ``Δ = softplus(Δ_raw)``.
Inputs are Mamba-like: A = -(1..N) per channel (S4D-real init), Δ ≈ softplus(N(-4, 0.5)) ≈ 0.02.

Each (case, method) runs in a fresh interpreter (:func:`nnunet_ext.bench.harness.run_isolated`),
so one method's memory cannot hide another's:

1. a tiny warm-up call (imports, numba's compile-cache load), then the case's inputs are built;
2. extra peak memory of one forward+backward above the memory before it
   (:class:`~nnunet_ext.bench.memory.PeakMemory`: on CPU the peak resident set, so it includes
   the gradients and any allocator caching and counts pages touched; on CUDA
   ``torch.cuda.max_memory_allocated``);
3. times: forward (no_grad) and forward+backward, each the mean of ``repeats`` calls timed by
   ``torch.utils.benchmark.Timer`` (:func:`~nnunet_ext.bench.harness.seconds_per_call`); a method
   whose first forward+backward took over :data:`SLOW_S` seconds is timed by one call of each
   instead (the ``runs`` column says so).
"""

from __future__ import annotations

from nnunet_ext.bench.harness import run_isolated, seconds_once, seconds_per_call
from nnunet_ext.bench.memory import PeakMemory

#: default cases (B, E, N, L): Mamba-block sizes from 512 to 32768 tokens (8192: the longest that
#: selective_scan_ref is run at), and one case twice as wide with a batch of 2
DEFAULT_CASES = [(1, 96, 16, 512), (1, 96, 16, 4096), (1, 96, 16, 8192), (1, 96, 16, 32768),
                 (2, 192, 16, 4096)]
METHODS = ("torch", "fused", "cuda", "reference", "mambapy")
#: a method whose first fwd+bwd takes longer is not repeated
SLOW_S = 20.0
#: selective_scan_ref is skipped above this many tokens (its backward is O(L²): minutes)
REFERENCE_MAX_LENGTH = 8192


# ---------------------------------------------------------------------------------------------
# the methods (each: fn(inputs) -> y)
# ---------------------------------------------------------------------------------------------

def make_inputs(b, e, n, length, device="cpu", seed=0):
    """Mamba-like inputs; the tensors that get gradients have requires_grad set."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = dict(u=torch.randn(b, e, length, generator=g),
             delta=torch.randn(b, e, length, generator=g) * 0.5 - 4.0,
             A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1),
             B=torch.randn(b, n, length, generator=g), C=torch.randn(b, n, length, generator=g),
             D=torch.ones(e), z=torch.randn(b, e, length, generator=g))
    return {k: v.to(device).requires_grad_() for k, v in t.items()}


def loop_reference(u, delta, A, B, C, D=None, z=None, delta_softplus=False):
    """Stand-in for mamba-ssm's ``selective_scan_ref`` (same algorithm and tensor layout): the
    (B, E, L, N) decay and input tensors are built first, then one Python step per token."""
    import torch
    import torch.nn.functional as F

    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[..., None] * A[:, None, :])                       # (B, E, L, N)
    inp = (delta * u)[..., None] * B.float().transpose(1, 2)[:, None]         # (B, E, L, N)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = decay[:, :, i] * h + inp[:, :, i]
        ys.append(torch.einsum("ben,bn->be", h, C[:, :, i].float()))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def mambapy_scan(u, delta, A, B, C, D=None, z=None, delta_softplus=False):
    """The selective scan through ``mambapy.pscan.pscan`` (inputs in mamba-ssm's layout)."""
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    if delta_softplus:
        delta = F.softplus(delta)
    dt = delta.transpose(1, 2)                                                # (B, L, E)
    decay = (dt[..., None] * A).exp()                                          # (B, L, E, N)
    bx = (dt * u.transpose(1, 2))[..., None] * B.transpose(1, 2)[:, :, None]   # (B, L, E, N)
    hs = pscan(decay, bx)                                                      # (B, L, E, N)
    y = (hs @ C.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)        # (B, E, L)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def _method_fn(method: str, device: str):
    """(callable(inputs) -> y, label, reason-if-unavailable)."""
    from nnunet_ext.ops import backends
    from nnunet_ext.ops.selective_scan import BLOCK, selective_scan_torch

    kw = dict(delta_softplus=True)
    if method == "torch":
        return (lambda t: selective_scan_torch(**t, **kw)), f"torch (ours, blocked, T={BLOCK})", None
    if method.startswith("torch@"):  # block-size sweep: torch@16, torch@64, ...
        block = int(method[6:])
        return (lambda t: selective_scan_torch(**t, **kw, block=block)), f"torch (ours, T={block})", None
    if method == "fused":
        if device != "cpu":
            return None, "fused (ours, numba)", "CPU only"
        fn = backends.fused_scan()
        if fn is None:
            return None, "fused (ours, numba)", backends.why_unavailable("fused").reason
        return (lambda t: fn(**t, **kw)), "fused (ours, numba)", None
    if method == "cuda":
        fn = backends.mamba_ssm_scan()
        if device != "cuda":
            return None, "cuda (mamba-ssm kernel)", "CUDA only"
        if fn is None:
            return None, "cuda (mamba-ssm kernel)", backends.why_unavailable("cuda", device).reason
        return (lambda t: fn(**t, **kw)), "cuda (mamba-ssm kernel)", None
    if method == "reference":
        reference = mamba_ssm_reference()
        if reference is not None:
            return (lambda t: reference(**t, **kw)), "mamba-ssm selective_scan_ref", None
        return (lambda t: loop_reference(**t, **kw)), "loop_reference (stand-in for selective_scan_ref)", None
    if method == "mambapy":
        try:
            import importlib
            importlib.import_module("mambapy.pscan")
        except Exception as e:
            return None, "mambapy pscan", f"not importable ({e})"
        return (lambda t: mambapy_scan(**t, **kw)), "mambapy pscan", None
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def mamba_ssm_reference():
    """mamba-ssm's ``selective_scan_ref`` when its module imports, else None."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    except Exception:
        return None
    return selective_scan_ref


# ---------------------------------------------------------------------------------------------
# one (case, method) measurement -- runs in a subprocess
# ---------------------------------------------------------------------------------------------

def measure(b, e, n, length, method, repeats=3, device="cpu", memory=True) -> dict:
    """Time (and peak memory of) one method on one case, in this process."""
    import torch

    row = dict(B=b, E=e, N=n, L=length, method=method, device=device, threads=torch.get_num_threads())
    fn, label, why = _method_fn(method, device)
    row["label"] = label
    if fn is None:
        row["note"] = f"skipped: {why}"
        return row

    def fwd_bwd(t):
        y = fn(t)
        torch.autograd.grad(y.float().square().mean(), list(t.values()))

    def fwd(t):
        with torch.no_grad():
            fn(t)

    fwd_bwd(make_inputs(1, min(e, 4), n, 64, device))  # imports, kernel compile/load
    t = make_inputs(b, e, n, length, device)
    peak = PeakMemory(device)
    first = seconds_once(lambda: fwd_bwd(t))
    if memory and peak.resettable:
        row["extra_peak_mb"] = round(peak.above_baseline() / 2**20, 1)
    if first > SLOW_S:
        row.update(fwd_ms=1e3 * seconds_once(lambda: fwd(t)), fwd_bwd_ms=1e3 * first, runs=1)
        return row
    row.update(fwd_ms=1e3 * seconds_per_call(lambda: fwd(t), repeats),
               fwd_bwd_ms=1e3 * seconds_per_call(lambda: fwd_bwd(t), repeats), runs=repeats)
    return row


# ---------------------------------------------------------------------------------------------
# the whole table
# ---------------------------------------------------------------------------------------------

def benchmark_scan(cases=None, methods=METHODS, repeats=3, device="cpu", threads=None, memory=True,
                   reference_max_length=REFERENCE_MAX_LENGTH, progress=None) -> list[dict]:
    """Rows ``{B, E, N, L, method, label, fwd_ms, fwd_bwd_ms, extra_peak_mb, runs, note,
    speedup_vs_mambapy_fwd, speedup_vs_mambapy_fwd_bwd, speedup_vs_reference_fwd_bwd}``.

    Each (case, method) is measured in a fresh interpreter (see the module docstring).
    ``threads`` defaults to this process's ``torch.get_num_threads()``.
    """
    import torch

    threads = int(threads or torch.get_num_threads())
    rows = []
    for b, e, n, length in (cases or DEFAULT_CASES):
        case_rows = []
        for method in methods:
            if method == "reference" and length > reference_max_length:
                row = dict(B=b, E=e, N=n, L=length, method=method, label="selective_scan_ref",
                           note=f"skipped: L > {reference_max_length} (its backward grows with L², minutes)")
            else:
                row = run_isolated(measure, dict(b=b, e=e, n=n, length=length, method=method,
                                                 repeats=repeats, device=device, memory=memory), threads)
                if "error" in row:
                    row = dict(B=b, E=e, N=n, L=length, method=method, note=f"failed: {row['error']}")
            case_rows.append(row)
            if progress:
                progress(row)
        _add_ratios(case_rows)
        rows += case_rows
    return rows


def _add_ratios(case_rows):
    by = {r["method"]: r for r in case_rows}
    for r in case_rows:
        for other, key in (("mambapy", "fwd_ms"), ("mambapy", "fwd_bwd_ms"), ("reference", "fwd_bwd_ms")):
            o = by.get(other, {})
            if r.get(key) and o.get(key):
                r[f"speedup_vs_{other}_{key[:-3]}"] = round(o[key] / r[key], 2)


def format_table(rows) -> str:
    head = ["B", "E", "N", "L", "method", "fwd ms", "fwd+bwd ms", "extra peak MB", "runs",
            "× mambapy fwd", "× mambapy f+b", "× reference f+b"]
    out = [head]
    for r in rows:
        f = lambda k, fmt="{:.1f}": fmt.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
        out.append([str(r["B"]), str(r["E"]), str(r["N"]), str(r["L"]), r.get("label", r["method"]),
                    f("fwd_ms"), f("fwd_bwd_ms"), f("extra_peak_mb"), str(r.get("runs", "-")),
                    f("speedup_vs_mambapy_fwd", "{:.2f}"), f("speedup_vs_mambapy_fwd_bwd", "{:.2f}"),
                    f("speedup_vs_reference_fwd_bwd", "{:.1f}")])
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i != 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in out]
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"  {r['label'] if 'label' in r else r['method']} at B{r['B']} E{r['E']} N{r['N']} L{r['L']}: "
             f"{r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + (["notes:"] + notes if notes else []))

