"""Which implementation runs an op: back-end names, availability probes and the forcing switch.

Back-ends of :func:`nnunet_ext.ops.selective_scan` (and, where one exists, of
:func:`nnunet_ext.ops.causal_conv1d`):

- ``cuda``: mamba-ssm's ``selective_scan_fn`` / causal-conv1d's ``causal_conv1d_fn`` -- CUDA
  tensors only, needs the optional ``[cuda]`` extra (GPU machines).
- ``triton``: our Triton scan in :mod:`nnunet_ext.ops.scan_triton` (scan only) -- CUDA tensors,
  needs ``triton`` (shipped with PyTorch's Linux CUDA wheels; nothing to compile at install). On
  CPU tensors it runs only when forced and under Triton's interpreter (``TRITON_INTERPRET=1`` set
  before the first use: how the tests check it).
- ``fused``: the numba CPU kernel in :mod:`nnunet_ext.ops.scan_fused` -- CPU tensors only.
- ``torch``: our blocked PyTorch scan -- any device (also the meta device).

The plain sequential loop every back-end is tested against,
:func:`nnunet_ext.ops.reference.selective_scan_sequential`, is a function, not a back-end.

``auto`` (the default) picks, for CUDA tensors, ``cuda`` when mamba-ssm's kernel loads and runs
on the GPU, else ``triton`` when our Triton kernel passes its probe on the GPU (a tiny forward
and backward against the reference), else ``torch``; for CPU tensors ``fused`` when it imports,
else ``torch``; meta tensors always go to ``torch``. The causal conv1d has no Triton or fused
version (``cuda`` -> ``torch``). Force a back-end with the ``backend=`` argument or the
environment variable ``NNUNET_EXT_SCAN_BACKEND`` (auto | cuda | triton | fused | torch); a forced
``triton`` or ``fused`` gives the conv ``torch``.

Optional packages are probed lazily and at most once per process; a broken install (for example
mamba-ssm built without its CUDA ops, whose import raises ``No module named
'selective_scan_cuda'``) counts as "not available", it never breaks ``import nnunet_ext``.

No silent slow path: when ``auto`` has to fall back to ``torch`` -- for CUDA tensors because
both mamba-ssm's kernel (package missing, installed without its CUDA extension, or failing to run
on this GPU) and the Triton kernel (triton missing, or failing its probe) cannot run, or for CPU
tensors because the fused kernel cannot -- a :class:`SlowBackendWarning` naming the reasons and
the fixes is issued once per process and op (on stderr under Python's default warning filters).
Choosing ``triton`` because mamba-ssm is missing does not warn: it is a kernel, and
``nnunet-ext gpu-check`` reports why ``cuda`` was passed over. Forcing a back-end never warns.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import NamedTuple

import torch

#: environment variable that forces a back-end (same values as the ``backend=`` argument)
ENV_VAR = "NNUNET_EXT_SCAN_BACKEND"
#: every name ``backend=`` / the environment variable accepts
BACKENDS = ("auto", "cuda", "triton", "fused", "torch")

#: per op: (pip name, top-level module, build switch of its setup.py, what the kernel is)
_CUDA_PACKAGES = {
    "scan": ("mamba-ssm", "mamba_ssm", "MAMBA_FORCE_BUILD", "mamba-ssm's selective-scan kernel"),
    "conv": ("causal-conv1d", "causal_conv1d", "CAUSAL_CONV1D_FORCE_BUILD", "causal-conv1d's kernel"),
}
#: per op: what its setup.py needs to build the CUDA op at all -- mamba-ssm after 2.3.2 builds
#: ``selective_scan_cuda`` only with MAMBA_KEEP_CUDA_BUILD=TRUE (ignored by the releases before).
#: Both need ``--no-build-isolation``: their setup.py imports the installed (CUDA) torch.
_KEEP_CUDA = {"scan": "MAMBA_KEEP_CUDA_BUILD=TRUE ", "conv": ""}


class BackendUnavailableError(RuntimeError):
    """A forced back-end cannot run here (missing package, or tensors on the wrong device)."""


class SlowBackendWarning(UserWarning):
    """Automatic selection passed over a faster kernel that should run here (issued once per
    process and op); the message names the reason and the fix."""


class Unavailable(NamedTuple):
    """Why a back-end cannot run (``reason``) and what makes it run (``fix``)."""
    reason: str
    fix: str


def _missing_cuda_package(op: str, exc: BaseException) -> Unavailable:
    """Classify a failed import of ``op``'s CUDA package: not installed, or installed without a
    working CUDA extension (e.g. ``No module named 'selective_scan_cuda'``)."""
    pip_name, module, _, _ = _CUDA_PACKAGES[op]
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module:
        return Unavailable(f"{pip_name} is not installed ({detail})",
                           f"install the CUDA kernels with `{_KEEP_CUDA[op]}pip install --no-build-isolation "
                           f"{pip_name}` (nnunet-ext's [cuda] extra; it compiles against your torch/CUDA pair, or "
                           "a matching prebuilt wheel is fetched)")
    return Unavailable(f"{pip_name} is installed without a working CUDA extension ({detail})",
                       _rebuild_fix(op))


def _rebuild_fix(op: str) -> str:
    pip_name, _, switch, _ = _CUDA_PACKAGES[op]
    return (f"build it from source on this GPU machine (needs nvcc): `{_KEEP_CUDA[op]}{switch}=TRUE pip install "
            f"--no-build-isolation --no-cache-dir --force-reinstall {pip_name}`")


# ---------------------------------------------------------------------------------------------
# probes (cached: each optional import is tried once per process)
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _probe_mamba_ssm():
    """``(selective_scan_fn, None)`` when mamba-ssm's CUDA op loads, else ``(None, Unavailable)``."""
    try:
        mod = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        fn = mod.selective_scan_fn
    except Exception as e:  # ModuleNotFoundError('selective_scan_cuda'), OSError from .so, ...
        return None, _missing_cuda_package("scan", e)
    return fn, None


@functools.lru_cache(maxsize=None)
def _probe_causal_conv1d():
    """``(causal_conv1d_fn, None)`` when causal-conv1d's CUDA op loads, else ``(None, Unavailable)``."""
    try:
        mod = importlib.import_module("causal_conv1d")
        fn = mod.causal_conv1d_fn
        if fn is None:
            raise ImportError("causal_conv1d.causal_conv1d_fn is None (CUDA op missing)")
    except Exception as e:
        return None, _missing_cuda_package("conv", e)
    return fn, None


@functools.lru_cache(maxsize=None)
def _probe_fused():
    """``(module, None)`` when our numba kernel imports and says it can run, else ``(None, Unavailable)``."""
    fix = "`pip install numba` (a numba that supports this Python and CPU)"
    try:
        mod = importlib.import_module("nnunet_ext.ops.scan_fused")
        ok = bool(mod.fused_available())
    except Exception as e:
        return None, Unavailable(f"{type(e).__name__}: {e}", fix)
    if not ok:
        return None, Unavailable(
            "nnunet_ext.ops.scan_fused.fused_available() is False (numba missing or broken)", fix)
    return mod, None


#: what makes the Triton kernel importable
_TRITON_FIX = ("install triton (`pip install triton`; PyTorch's Linux CUDA wheels ship the version they were "
               "built with)")


@functools.lru_cache(maxsize=None)
def _probe_triton():
    """``(module, None)`` when :mod:`nnunet_ext.ops.scan_triton` (and so triton) imports, else
    ``(None, Unavailable)``."""
    try:
        mod = importlib.import_module("nnunet_ext.ops.scan_triton")
    except Exception as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "triton"
        what = "triton is not installed" if missing else "the Triton scan does not import"
        return None, Unavailable(f"{what} ({type(e).__name__}: {e})", _TRITON_FIX)
    return mod, None


def _run_triton_probe(mod, dev: torch.device) -> None:
    """Run the Triton scan's forward and backward once on tiny inputs on ``dev`` against the
    reference (raises if it cannot compile, run or agree there)."""
    mod.self_check(dev)
    torch.cuda.synchronize(dev)


@functools.lru_cache(maxsize=None)
def _probe_triton_call(index):
    """None when the Triton scan runs on CUDA device ``index``, else :class:`Unavailable`."""
    mod, why = _probe_triton()
    if mod is None:
        return why
    if mod.INTERPRET:
        return Unavailable("TRITON_INTERPRET=1 is set, so Triton kernels run in its slow CPU interpreter",
                           "unset TRITON_INTERPRET")
    if not torch.cuda.is_available():
        return Unavailable("torch sees no CUDA device", "run on a machine with a CUDA GPU")
    try:
        _run_triton_probe(mod, torch.device("cuda", torch.cuda.current_device() if index is None else index))
    except Exception as e:
        return Unavailable(f"the Triton scan kernel fails on this GPU ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]})",
                           "use the triton version your torch was built with (`pip install triton==<the "
                           "version torch requires>`), or install mamba-ssm's CUDA kernels")
    return None


def _run_cuda_probe(op: str, fn, dev: torch.device) -> None:
    """Call ``op``'s CUDA kernel ``fn`` once on tiny zeros on ``dev`` and wait for it (raises if
    it cannot run there)."""
    z = lambda *s: torch.zeros(*s, device=dev)  # noqa: E731
    if op == "scan":
        fn(z(1, 1, 4), z(1, 1, 4), z(1, 1) - 1, z(1, 1, 4), z(1, 1, 4))
    else:
        fn(z(1, 8, 4), z(8, 4))
    torch.cuda.synchronize(dev)


@functools.lru_cache(maxsize=None)
def _probe_cuda_call(op: str, index):
    """None when the CUDA kernel of ``op`` runs on device ``index``, else :class:`Unavailable`.

    Importing is not enough: a wheel built for another GPU architecture imports and then fails
    with "no kernel image". Without a visible GPU there is nothing to run it on (and no CUDA
    tensors), so the import alone counts.
    """
    fn, why = _probe_mamba_ssm() if op == "scan" else _probe_causal_conv1d()
    if fn is None:
        return why
    if not torch.cuda.is_available():
        return None
    try:
        _run_cuda_probe(op, fn, torch.device("cuda", torch.cuda.current_device() if index is None else index))
    except Exception as e:
        return Unavailable(f"{_CUDA_PACKAGES[op][0]} is installed but its kernel does not run on this "
                           f"GPU ({type(e).__name__}: {e})", _rebuild_fix(op))
    return None


def mamba_ssm_scan():
    """mamba-ssm's ``selective_scan_fn`` when its CUDA op loads, else ``None``."""
    return _probe_mamba_ssm()[0]


def causal_conv1d_cuda_fn():
    """causal-conv1d's ``causal_conv1d_fn`` when it imports, else ``None``."""
    return _probe_causal_conv1d()[0]


def triton_scan():
    """``nnunet_ext.ops.scan_triton.selective_scan_triton`` when triton imports, else ``None``."""
    mod = _probe_triton()[0]
    return None if mod is None else mod.selective_scan_triton


def fused_scan():
    """``nnunet_ext.ops.scan_fused.selective_scan_fused`` when available, else ``None``."""
    mod = _probe_fused()[0]
    return None if mod is None else mod.selective_scan_fused


def why_unavailable(backend: str, device=None, op: str = "scan") -> Unavailable | None:
    """Why ``backend`` cannot run ``op`` ('scan' or 'conv') here -- an :class:`Unavailable` (reason and
    fix) -- or None when it can: ``cuda`` its CUDA kernel loads and runs on ``device`` (default the
    current GPU; without a GPU, loading is enough), ``triton`` our Triton scan passes its probe there,
    ``fused`` the numba CPU kernel imports; ``torch`` always runs. Cached like the back-end choice."""
    index = None if device is None else _device_index(device)
    if backend == "cuda":
        return _probe_cuda_call(op, index)
    if backend == "triton":
        return _probe_triton_call(index)
    if backend == "fused":
        return _probe_fused()[1]
    if backend == "torch":
        return None
    raise ValueError(f"why_unavailable: backend must be one of cuda, triton, fused, torch, got {backend!r}")


def clear_cache() -> None:
    """Forget the probes and the warnings already given (tests that fake or remove optional
    packages call this)."""
    _probe_mamba_ssm.cache_clear()
    _probe_causal_conv1d.cache_clear()
    _probe_fused.cache_clear()
    _probe_cuda_call.cache_clear()
    _probe_triton.cache_clear()
    _probe_triton_call.cache_clear()
    _warned.clear()


#: (op, device type) pairs whose slow fallback has been reported in this process
_warned: set = set()


def _warn_fallback(op: str, kind: str, chosen: str, why: Unavailable | None) -> None:
    """Issue the :class:`SlowBackendWarning` for ``op`` on ``kind`` tensors, once per process
    (``stacklevel`` points at the caller of :func:`resolve_backend`)."""
    if (op, kind) in _warned or why is None:
        return
    _warned.add((op, kind))
    what = "selective scan" if op == "scan" else "causal conv1d"
    faster = _CUDA_PACKAGES[op][3] if kind == "cuda" else "the fused CPU kernel (numba)"
    if kind == "cuda" and op == "scan":
        faster += " or our Triton kernel"
    warnings.warn(
        f"nnunet-ext: the {what} on {kind} tensors runs the slower '{chosen}' back-end instead of "
        f"{faster}: {why.reason}. Fix: {why.fix}. To choose '{chosen}' deliberately (and silence "
        f"this message) set {ENV_VAR}={chosen}.",
        SlowBackendWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------

def _device_type(device) -> str:
    if isinstance(device, torch.Tensor):
        device = device.device
    return torch.device(device).type


def _device_index(device):
    if isinstance(device, torch.Tensor):
        device = device.device
    return torch.device(device).index


def available_backends(device="cpu", op: str = "scan") -> list[str]:
    """Back-ends that can run ``op`` ('scan' or 'conv') on ``device``, fastest first ('torch' is
    always last; for 'conv' there is no Triton or fused one)."""
    kind = _device_type(device)
    if op not in ("scan", "conv"):
        raise ValueError(f"available_backends: op must be 'scan' or 'conv', got {op!r}")
    names = []
    if kind == "cuda" and _probe_cuda_call(op, _device_index(device)) is None:
        names.append("cuda")
    if kind == "cuda" and op == "scan" and _probe_triton_call(_device_index(device)) is None:
        names.append("triton")
    if kind == "cpu" and op == "scan" and fused_scan() is not None:
        names.append("fused")
    names.append("torch")
    return names


def requested_backend(backend: str | None = None) -> str:
    """The back-end asked for: the argument, else ``$NNUNET_EXT_SCAN_BACKEND``, else 'auto'."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "").strip() or "auto"
    name = name.lower()
    if name not in BACKENDS:
        src = "backend=" if backend is not None else f"${ENV_VAR}="
        raise ValueError(f"{src}{name!r} is not a scan back-end; choose one of {', '.join(BACKENDS)}")
    return name


def check_backend_setting(device=None) -> str:
    """Check ``$NNUNET_EXT_SCAN_BACKEND`` at start-up, before anything is computed or written: its
    value must name a back-end (``ValueError``), and with ``device`` (a torch device or its name) a
    forced back-end must be able to run there (:class:`BackendUnavailableError` naming the fix). The
    trainers and the commands call this first, so a bad value stops them with its one message instead
    of failing inside the first training step. Returns the requested name ('auto' when unset)."""
    name = requested_backend()
    if name != "auto" and device is not None:
        resolve_backend(torch.device(device), op="scan")
    return name


def resolve_backend(tensor, backend: str | None = None, op: str = "scan") -> str:
    """The back-end that runs ``op`` ('scan' or 'conv') for ``tensor`` (or a device).

    ``backend`` (or ``$NNUNET_EXT_SCAN_BACKEND``) forces one; a forced back-end that cannot run
    raises :class:`BackendUnavailableError` naming the fix. Meta tensors always resolve to
    'torch' (shape-only runs such as ``nnunet-ext summary``).
    """
    name = requested_backend(backend)
    kind = _device_type(tensor)
    if kind == "meta":
        return "torch"
    if name == "auto":
        chosen = available_backends(kind, op)[0]
        if kind == "cuda" and chosen not in ("cuda", "triton"):
            why = _probe_cuda_call(op, _device_index(tensor))
            if op == "scan" and why is not None:
                why_triton = _probe_triton_call(_device_index(tensor))
                why = Unavailable(f"{why.reason}; and the Triton kernel cannot run: {why_triton.reason}",
                                  f"{why.fix}; or, for the Triton kernel: {why_triton.fix}")
            _warn_fallback(op, kind, chosen, why)
        elif kind == "cpu" and op == "scan" and chosen != "fused":
            _warn_fallback(op, kind, chosen, _probe_fused()[1])
        return chosen
    if op == "conv" and name in ("triton", "fused"):
        return "torch"  # causal conv1d has only the CUDA kernel and our PyTorch version
    if name == "cuda":
        if kind != "cuda":
            raise BackendUnavailableError(
                f"scan back-end 'cuda' needs CUDA tensors, got {kind} tensors; "
                f"unset {ENV_VAR} or pass backend='auto'")
        why = _probe_cuda_call(op, _device_index(tensor))
        if why is not None:
            pkg = _CUDA_PACKAGES[op][0]
            raise BackendUnavailableError(
                f"scan back-end 'cuda' needs {pkg} with its CUDA ops ({why.reason}); fix: {why.fix}")
    if name == "triton":
        _check_forced_triton(tensor, kind)
    if name == "fused":
        if kind != "cpu":
            raise BackendUnavailableError(
                f"scan back-end 'fused' is a CPU kernel, got {kind} tensors; use 'auto' or 'torch'")
        probe = _probe_fused()
        if probe[0] is None:
            raise BackendUnavailableError(
                f"scan back-end 'fused' is not available ({probe[1].reason}); "
                "it needs numba (`pip install numba`) and nnunet_ext.ops.scan_fused")
    return name


def _check_forced_triton(tensor, kind: str) -> None:
    """Raise :class:`BackendUnavailableError` when a forced ``triton`` cannot run on ``kind`` tensors."""
    mod, why = _probe_triton()
    if mod is None:
        raise BackendUnavailableError(f"scan back-end 'triton' is not available ({why.reason}); fix: {why.fix}")
    if kind == "cuda":
        if mod.INTERPRET:
            return  # asked for, interpreter and all
        why = _probe_triton_call(_device_index(tensor))
        if why is not None:
            raise BackendUnavailableError(f"scan back-end 'triton' cannot run here ({why.reason}); fix: {why.fix}")
    elif not mod.INTERPRET:
        raise BackendUnavailableError(
            f"scan back-end 'triton' needs CUDA tensors, got {kind} tensors (on the CPU it runs only under "
            "Triton's interpreter: set TRITON_INTERPRET=1 before nnunet_ext.ops.scan_triton is first imported); "
            f"unset {ENV_VAR} or pass backend='auto'")
