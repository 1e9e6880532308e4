"""Compile the Triton scan's kernels for real NVIDIA GPUs on any machine: no GPU, no driver.

The tests run :mod:`nnunet_ext.ops.scan_triton` under Triton's interpreter, which does not check
what Triton's compiler checks (the type of a loop-carried value, register use). Here every kernel
specialisation that :func:`~nnunet_ext.ops.scan_triton.selective_scan_triton` can launch is
compiled for GPU architectures (``sm_80``, ``sm_90``, ...) with ``triton.compile`` (a
``GPUTarget`` needs no GPU; Triton's wheel ships ``ptxas``, ``ptxas-blackwell`` for sm_100 and
above, and ``cuobjdump``), and ``cuobjdump --dump-resource-usage`` reads from each cubin its
registers per thread, spilled bytes (STACK + LOCAL) and shared memory.

Specialisations are not listed by hand: :func:`specialise` takes the launches that
:func:`~nnunet_ext.ops.scan_triton.kernel_launches` makes for a :class:`Call` (on ``meta``
tensors) and turns each into what Triton's JIT compiles at that launch -- signature (pointer
dtypes, integers specialised as 1 / multiple of 16 / other), ``constexpr`` flags and tile sizes,
alignment attributes and options -- with Triton's own binder. Identical ones are compiled once.

:func:`calls` lists the calls of a coverage level:

- ``tiles``: N in :data:`N_VALUES` and E from 1 to :data:`E_MAX` -- one call per distinct
  (kernel, tile sizes) the dispatcher picks there (the largest such E) -- with every option on
  (D, z, delta_bias, softplus, gradients, the last state's gradient: the most live values), at
  float16 activations with float32 A / D / delta_bias (the Mamba blocks under AMP);
- ``options``: every combination of D, z, delta_bias, softplus, gradients and the last state's
  gradient at N 16, float32;
- ``dtypes``: every :data:`DTYPES` pair at N 16, every option on;
- ``shapes``: E and L giving each integer specialisation (1, other, multiple of 16) at N 16;
- ``full`` (not run by the tests; ~3 300 specialisations per architecture): the cross product of
  every option combination, every dtype pair and every tile.

The default (``ci``) is the union of the first four (116 specialisations per architecture):
every value of every factor, every tile at the most demanding options, every option
combination at the networks' N. Failures: a compile error anywhere, or spilled bytes at N ≤
:data:`SPILL_FREE_MAX_N` (every network of ours uses N 16).

Compiled kernels are cached by Triton (``~/.triton/cache``, or ``$TRITON_CACHE_DIR``), so a second
run takes seconds. On a GPU whose architecture is compiled, the driver's register and spill
counts of the loaded kernel are recorded beside cuobjdump's (``driver_regs``, ``driver_spills``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import itertools
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["Call", "Spec", "calls", "specialise", "distinct_specs", "compile_spec", "compile_all", "run",
           "summarise", "format_table", "gpu_check_rows", "resource_usage", "parse_arch", "DEFAULT_ARCHS",
           "N_VALUES", "E_MAX", "DTYPES", "LEVELS", "SPILL_FREE_MAX_N"]

#: architectures compiled by default (A100, H100)
DEFAULT_ARCHS = ("sm_80", "sm_90")
#: state sizes compiled (every network of ours uses 16; mamba-ssm allows up to 256)
N_VALUES = (1, 4, 16, 64, 128, 256)
#: largest channel count E compiled (SegMamba's widest stage is 768 channels x expand 2)
E_MAX = 1536
#: spilling fails the check up to this N; above it the spilled bytes are reported
SPILL_FREE_MAX_N = 64
#: (activations u, delta, B, C, z; parameters A, D, delta_bias) dtypes of the calls compiled
DTYPES = (("float32", "float32"), ("float16", "float32"), ("bfloat16", "float32"),
          ("float16", "float16"), ("bfloat16", "bfloat16"))
#: the Mamba blocks' call under AMP (float16 activations, float32 parameters)
NETWORK_DTYPES = ("float16", "float32")
#: coverage levels of :func:`calls`
LEVELS = ("tiles", "options", "dtypes", "shapes")
#: the tokens of the calls whose integers are not the point (a multiple of every chunk, many chunks)
LENGTH = 4096
#: (E, L) of the ``shapes`` level: E = 1, L = 1 (one chunk); other E and L; a chunk count of 16
SHAPES = ((1, 1), (3, 37), (96, 1000), (96, 64 * 16), (24, 1024 + 1))


@dataclass(frozen=True)
class Call:
    """One call of the scan, as far as it decides the kernels' specialisations."""
    n: int
    e: int = 96
    length: int = LENGTH
    dtype: str = "float32"         # u, delta, B, C, z
    param_dtype: str = "float32"   # A, D, delta_bias
    d: bool = True
    z: bool = True
    bias: bool = True
    softplus: bool = True
    grad: bool = True              # forward saves chunk states, then the two backward kernels
    last_grad: bool = True         # the last state's gradient is used too

    def describe(self) -> str:
        opts = [name for name in ("d", "z", "bias", "softplus") if getattr(self, name)]
        grad = ("grad+last" if self.last_grad else "grad") if self.grad else "no grad"
        return (f"N {self.n}, E {self.e}, L {self.length}, {self.dtype}/{self.param_dtype}, "
                f"{'+'.join(opts) or 'no options'}, {grad}")

    def launches(self):
        """What :func:`~nnunet_ext.ops.scan_triton.kernel_launches` launches for this call (meta tensors)."""
        from nnunet_ext.ops import scan_triton

        act, par = getattr(torch, self.dtype), getattr(torch, self.param_dtype)
        m = lambda dt, *shape: torch.empty(*shape, dtype=dt, device="meta")  # noqa: E731
        b, e, n, length = 1, self.e, self.n, self.length
        return scan_triton.kernel_launches(
            m(act, b, e, length), m(act, b, e, length), m(par, e, n), m(act, b, n, length), m(act, b, n, length),
            D=m(par, e) if self.d else None, z=m(act, b, e, length) if self.z else None,
            delta_bias=m(par, e) if self.bias else None, delta_softplus=self.softplus,
            requires_grad=self.grad, last_state_grad=self.grad and self.last_grad)


@dataclass(frozen=True)
class Spec:
    """One kernel specialisation as Triton's JIT compiles it (picklable)."""
    kernel: str
    signature: tuple          # ((argument name, Triton type or "constexpr"), ...)
    constexprs: tuple         # ((argument index path, value), ...)
    attrs: tuple              # ((argument index path, ((attribute, value), ...)), ...)
    options: tuple            # ((launch option, value), ...)

    def constant(self, name: str):
        names = [k for k, _ in self.signature]
        return dict(self.constexprs).get((names.index(name),))


@functools.lru_cache(maxsize=None)
def _backend():
    """Triton's CUDA back-end (for sm_90: the signature and attributes do not depend on the arch)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", 90, 32))


@functools.lru_cache(maxsize=None)
def _binder(kernel):
    """Triton's JIT binder of ``kernel``: launch arguments -> (bound, specialisation, options)."""
    from triton.runtime.jit import create_function_from_signature

    return create_function_from_signature(kernel.signature, kernel.params, _backend())


def specialise(launch) -> Spec:
    """The specialisation Triton's JIT compiles for ``launch`` (a
    :class:`~nnunet_ext.ops.scan_triton.KernelLaunch`), from Triton's own binder."""
    from triton import knobs

    kernel, backend = launch.kernel, _backend()
    kwargs = dict(launch.args, debug=kernel.debug or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    bound, specialization, options = _binder(kernel)(**kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    launch_options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in kernel.arg_names))
    return Spec(kernel.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())),
                tuple(sorted((k, tuple(tuple(a) for a in v)) for k, v in attrs.items())), launch_options)


def _all_options(n: int, **kw) -> Iterable[Call]:
    for d, z, bias, softplus, grad, last in itertools.product((True, False), repeat=6):
        if grad or not last:
            yield Call(n, d=d, z=z, bias=bias, softplus=softplus, grad=grad, last_grad=last, **kw)


def calls(level: str) -> list[Call]:
    """The calls of coverage ``level`` (one of :data:`LEVELS`, ``ci`` -- all of them -- or ``full``)."""
    act, par = NETWORK_DTYPES
    if level == "ci":
        return [c for lv in LEVELS for c in calls(lv)]
    if level == "tiles":
        out = []
        for n in N_VALUES:
            seen = {}
            for e in range(1, E_MAX + 1):
                call = Call(n, e=e, dtype=act, param_dtype=par)
                for launch in call.launches():
                    tile = (launch.kernel.__name__, launch.args["BE"], launch.args["BN"], launch.args["T"])
                    seen[tile] = call  # the largest E with this tile
            out += list(dict.fromkeys(seen.values()))
        return out
    if level == "options":
        return list(_all_options(16))
    if level == "dtypes":
        return [Call(16, dtype=a, param_dtype=p) for a, p in DTYPES]
    if level == "shapes":
        return [Call(16, e=e, length=length) for e, length in SHAPES]
    if level == "full":
        tiles = calls("tiles")
        return [replace(opt, n=t.n, e=t.e, dtype=a, param_dtype=p)
                for t in tiles for a, p in DTYPES for opt in _all_options(t.n)]
    raise ValueError(f"unknown coverage level {level!r}; use one of {', '.join(LEVELS + ('ci', 'full'))}")


def distinct_specs(call_list: Sequence[Call]) -> dict[Spec, Call]:
    """Every distinct specialisation the calls launch, with the first call that launches it."""
    out = {}
    for call in call_list:
        for launch in call.launches():
            out.setdefault(specialise(launch), call)
    return out


# ---------------------------------------------------------------------------------------------
# compiling
# ---------------------------------------------------------------------------------------------

def parse_arch(arch: str) -> int:
    """'sm_90' -> 90 (also 'sm90', '90'); ValueError naming the form otherwise."""
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})a?", arch.strip().lower())
    if not m:
        raise ValueError(f"architecture {arch!r}: give it as sm_<compute capability>, e.g. sm_80 sm_90 sm_120")
    return int(m.group(1))


_USAGE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: bytes, name: str) -> dict:
    """registers, stack, shared and local bytes of kernel ``name`` in ``cubin``, by the
    ``cuobjdump --dump-resource-usage`` that ships with Triton."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    for fn, reg, stack, shared, local in _USAGE.findall(out):
        if fn == name:
            return {"regs": int(reg), "stack": int(stack), "shared": int(shared), "local": int(local)}
    raise RuntimeError(f"cuobjdump reports no kernel {name} in the cubin:\n{out}")


def _kernels() -> dict:
    from nnunet_ext.ops import scan_triton

    if scan_triton.INTERPRET:
        raise RuntimeError("nnunet_ext.ops.scan_triton was imported under TRITON_INTERPRET=1 (kernels built for "
                           "the interpreter); unset TRITON_INTERPRET to compile them")
    return {k.__name__: k for k in scan_triton.KERNELS}


def compile_spec(spec: Spec, arch: str, kernel=None) -> dict:
    """Compile ``spec`` for ``arch``: a row with ``status`` ok / fail, ``error`` (its first lines),
    ``seconds`` and the cubin's resource usage; with a GPU of this architecture also the driver's
    ``driver_regs`` / ``driver_spills`` of the loaded kernel. ``kernel``: the ``@triton.jit``
    function (default: the kernel of :mod:`nnunet_ext.ops.scan_triton` named ``spec.kernel``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cc = parse_arch(arch)
    row = {"kernel": spec.kernel, "arch": f"sm_{cc}"}
    kernel = kernel or _kernels()[spec.kernel]
    src = ASTSource(kernel, dict(spec.signature), dict(spec.constexprs),
                    {k: [list(a) for a in v] for k, v in spec.attrs})
    start = time.perf_counter()
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(spec.options))
        row.update(resource_usage(compiled.asm["cubin"], compiled.metadata.name))
    except Exception as e:  # the compiler's own error, reported per specialisation
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # Triton's CompilationError: "at line:col:", the source, then the reason (and its cause)
        shown = lines if len(lines) <= 3 else [lines[0], "...", *lines[-2:]]
        row.update(status="fail", error=f"{type(e).__name__}: {' / '.join(shown)}"[:500],
                   seconds=time.perf_counter() - start)
        return row
    row.update(status="ok", seconds=time.perf_counter() - start, num_warps=compiled.metadata.num_warps)
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == divmod(cc, 10):
        compiled._init_handles()
        row.update(driver_regs=compiled.n_regs, driver_spills=compiled.n_spills)
    return row


def _worker_init() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def _compile_job(job):
    return compile_spec(*job)


def compile_all(specs: dict[Spec, Call], archs: Sequence[str], jobs: int | None = None,
                progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Compile every spec for every arch (``jobs`` processes; default: the CPU count); one row each,
    with the spec's N, tile, options and the call that launches it."""
    archs = [f"sm_{parse_arch(a)}" for a in archs]
    _kernels()
    work = [(spec, arch) for arch in archs for spec in specs]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if jobs == 1:
        results = map(_compile_job, work)
        pool = None
    else:
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_worker_init)
        results = pool.map(_compile_job, work, chunksize=1)
    rows = []
    try:
        for (spec, _), row in zip(work, results):
            call = specs[spec]
            names = [k for k, _ in spec.signature]
            row.update(n=call.n, tile="×".join(str(spec.constant(k)) for k in ("BE", "BN", "T")),
                       flags=",".join(names[i] for (i,), v in spec.constexprs if v is True),
                       dtypes=",".join(sorted({t for _, t in spec.signature if t.startswith("*")})),
                       call=call.describe())
            row["spill_bytes"] = row.get("stack", 0) + row.get("local", 0) if row["status"] == "ok" else None
            if row["status"] == "ok" and row["spill_bytes"] and call.n <= SPILL_FREE_MAX_N:
                row.update(status="fail", error=f"spills {row['spill_bytes']} bytes at N {call.n} "
                                                f"(must not spill for N <= {SPILL_FREE_MAX_N})")
            rows.append(row)
            if progress:
                progress(row)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return rows


def run(archs: Sequence[str] = DEFAULT_ARCHS, level: str = "ci", jobs: int | None = None,
        progress: Callable[[dict], None] | None = None) -> dict:
    """Compile coverage ``level`` for ``archs``: the report (JSON-ready) with every row, the
    summary per kernel x arch x N (:func:`summarise`) and ``ok``."""
    from triton import __version__ as triton_version

    start = time.perf_counter()
    specs = distinct_specs(calls(level))
    rows = compile_all(specs, archs, jobs, progress)
    failed = [r for r in rows if r["status"] != "ok"]
    return {"triton": triton_version, "archs": [f"sm_{parse_arch(a)}" for a in archs], "level": level,
            "specialisations": len(specs), "compiled": len(rows), "elapsed_s": time.perf_counter() - start,
            "rows": rows, "summary": summarise(rows), "failed": [_failure(r) for r in failed], "ok": not failed}


def _failure(row: dict) -> str:
    return f"{row['kernel']} {row['arch']} N {row['n']} tile {row['tile']} ({row['call']}): {row['error']}"


def summarise(rows: Sequence[dict]) -> list[dict]:
    """One row per kernel x arch x N: specialisations compiled and failed, the largest registers,
    spilled bytes and shared memory among them, and their compile seconds."""
    groups = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["arch"], r["n"]), []).append(r)
    out = []
    for (kernel, arch, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], parse_arch(kv[0][1]), kv[0][2])):
        ok = [r for r in rs if "regs" in r]
        out.append({"kernel": kernel, "arch": arch, "n": n, "compiled": len(rs),
                    "failed": sum(r["status"] != "ok" for r in rs),
                    "tiles": sorted({r["tile"] for r in rs}),
                    "regs": max((r["regs"] for r in ok), default=None),
                    "spill_bytes": max((r["spill_bytes"] for r in ok), default=None),
                    "shared": max((r["shared"] for r in ok), default=None),
                    "seconds": sum(r["seconds"] for r in rs)})
    return out


def format_table(report: dict) -> str:
    """The summary as a markdown table, with a heading line."""
    head = (f"Triton {report['triton']} kernels of nnunet_ext.ops.scan_triton compiled for "
            f"{', '.join(report['archs'])} (coverage '{report['level']}': {report['specialisations']} "
            f"specialisations, {report['compiled']} compilations, "
            f"{'all compiled' if report['ok'] else str(len(report['failed'])) + ' FAILED'}); per kernel x arch x N "
            "the largest registers per thread, spilled bytes (cuobjdump STACK + LOCAL) and shared memory "
            "among its specialisations")
    cols = ("kernel", "arch", "N", "tiles (BE×BN×T)", "specialisations", "registers", "spill bytes",
            "shared bytes", "compile s", "result")
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in report["summary"]:
        result = "ok" if not s["failed"] else f"{s['failed']} failed"
        lines.append("| " + " | ".join(str(c) for c in (
            s["kernel"], s["arch"], s["n"], ", ".join(s["tiles"]), s["compiled"], _v(s["regs"]),
            _v(s["spill_bytes"]), _v(s["shared"]), f"{s['seconds']:.1f}", result)) + " |")
    for f in report["failed"]:
        lines.append(f"\nFAILED {f}")
    return "\n".join(lines)


def gpu_check_rows(device: str, level: str = "ci", jobs: int | None = None) -> list[dict]:
    """Rows of ``nnunet-ext gpu-check``'s ``triton_compile`` section: on a CUDA device, coverage
    ``level`` compiled for the device's own architecture, one row per kernel x N (``backend``: its
    subject, ``status``, ``reason``: registers, spills, shared memory, the driver's counts of the
    loaded kernel, seconds; the failures); elsewhere one ``skipped`` row."""
    if device != "cuda":
        return [{"backend": "triton kernels", "device": device, "status": "skipped",
                 "reason": "no GPU here: `nnunet-ext gpu-check --compile-only` compiles them for any architecture"}]
    if importlib.util.find_spec("triton") is None:
        return [{"backend": "triton kernels", "device": device, "status": "skipped",
                 "reason": "triton is not installed (`pip install triton`: PyTorch's Linux wheels ship it)"}]
    major, minor = torch.cuda.get_device_capability()
    report = run([f"sm_{major}{minor}"], level, jobs)
    rows = []
    for s in report["summary"]:
        mine = [r for r in report["rows"] if (r["kernel"], r["arch"], r["n"]) == (s["kernel"], s["arch"], s["n"])]
        driver = [r for r in mine if "driver_regs" in r]
        reason = (f"{s['arch']}: {s['compiled']} specialisations, tiles {', '.join(s['tiles'])}; registers "
                  f"{_v(s['regs'])}, spill bytes {_v(s['spill_bytes'])}, shared {_v(s['shared'])} B"
                  + (f"; driver: registers {max(r['driver_regs'] for r in driver)}, spills "
                     f"{max(r['driver_spills'] for r in driver)}" if driver else "")
                  + f"; {s['seconds']:.0f} s")
        failures = [_failure(r) for r in mine if r["status"] != "ok"]
        rows.append({"backend": f"triton {s['kernel']} N {s['n']}", "device": device,
                     "status": "fail" if failures else "ok",
                     "reason": reason + ("; FAILED " + " | ".join(failures) if failures else "")})
    return rows


def _v(x) -> str:
    return "—" if x is None else str(x)

