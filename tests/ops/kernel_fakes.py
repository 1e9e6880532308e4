"""Strict CPU stand-ins for the two CUDA kernels the ``cuda`` back-end calls.

- :func:`make_selective_scan_fn` -> a fake of mamba-ssm's
  ``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
  return_last_state=False)``;
- :func:`make_causal_conv1d_fn` -> a fake of causal-conv1d's
  ``causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
  return_final_states=False, final_states_out=None, activation=None)``.

Each fake does what the real Python wrapper does to its arguments (the ``.contiguous()`` calls,
the 3-D -> 4-D view of B and C), then checks every precondition of the real C++ entry point in the
real order and with the real exception type (``TORCH_CHECK`` -> ``RuntimeError``, the wrapper's
``assert`` -> ``AssertionError``, a size read past a tensor's dimensions -> ``IndexError``), plus
what the CUDA kernels need without checking it (grid limits, 16-byte vector loads, group ratio).
Every refusal is a :class:`KernelContractError` whose message names the argument and whose
``source`` is the file and line of the real check. What passes is computed with our own code
(the sequential reference scan, or another scan given to :func:`make_selective_scan_fn`, and
:func:`nnunet_ext.ops.causal_conv1d.causal_conv1d_torch`) in float32 with autocast off, as the
kernels compute; outputs have the real dtypes and layouts (``torch.empty_like`` of the tensor the
real code allocates from).

The facts come from reading (not copying) the sources at these commits:

- mamba-ssm 2.3.2.post1, github.com/state-spaces/mamba @ e9594ce1c732d97440f0332fdc43170a2294dbfa:
  ``mamba_ssm/ops/selective_scan_interface.py``, ``csrc/selective_scan/selective_scan.cpp``,
  ``csrc/selective_scan/selective_scan_fwd_kernel.cuh``, ``csrc/selective_scan/selective_scan_common.h``;
- causal-conv1d 1.6.1, github.com/Dao-AILab/causal-conv1d @ 0d2252d161f25f7907bbd05985c08ab98d255874:
  ``causal_conv1d/causal_conv1d_interface.py``, ``causal_conv1d/cpp_functions.py``,
  ``csrc/causal_conv1d.cpp``, ``csrc/causal_conv1d_fwd.cu``.

:func:`route_cuda_backend_to_fakes` makes :mod:`nnunet_ext.ops` run its ``cuda`` back-end on CPU
tensors through these fakes (a test's ``monkeypatch`` undoes it).
"""

from __future__ import annotations

import sys
import types
from typing import Callable

import torch

from nnunet_ext.ops import ENV_VAR, backends
from nnunet_ext.ops.causal_conv1d import causal_conv1d_torch
from nnunet_ext.ops.reference import selective_scan_sequential

SS_PY = "mamba_ssm/ops/selective_scan_interface.py"
SS_CPP = "csrc/selective_scan/selective_scan.cpp"
SS_FWD = "csrc/selective_scan/selective_scan_fwd_kernel.cuh"
SS_COMMON = "csrc/selective_scan/selective_scan_common.h"
CC_PY = "causal_conv1d/causal_conv1d_interface.py"
CC_CPP = "csrc/causal_conv1d.cpp"
CC_FWD = "csrc/causal_conv1d_fwd.cu"

#: the input types both kernels are compiled for (u/delta/z, x)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
#: selective_scan.cpp: ``TORCH_CHECK(dstate <= 256, ...)`` (MAX_DSTATE in selective_scan_common.h)
MAX_DSTATE = 256
#: CUDA's largest grid y dimension; both kernels launch ``dim3 grid(batch, dim)``
MAX_GRID_Y = 65535


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

class KernelContractError(Exception):
    """A call the real kernel refuses (or cannot run correctly); ``source`` is where it refuses."""

    def __init__(self, message: str, source: str):
        super().__init__(f"{message} [real: {source}]")
        self.source = source


class KernelCheckError(KernelContractError, RuntimeError):
    """A failing ``TORCH_CHECK`` of the C++ entry point (RuntimeError there too)."""


class KernelIndexError(KernelContractError, IndexError):
    """The real code reads a size or stride of a dimension the tensor does not have."""


class KernelAssertionError(KernelContractError, AssertionError):
    """A failing ``assert`` of the Python wrapper."""


class KernelNotImplementedError(KernelContractError, NotImplementedError):
    """The wrapper's ``NotImplementedError`` (unknown activation)."""


class KernelLaunchError(KernelContractError, RuntimeError):
    """Not checked by the real code, but the CUDA kernel cannot run it correctly: a launch CUDA
    refuses, a misaligned vector load, or an out-of-bounds read."""


class FakeCannotCompute(NotImplementedError):
    """A call the real kernel accepts but this fake does not compute (no contract violation)."""


def _need(ok: bool, error: type, message: str, source: str) -> None:
    if not ok:
        raise error(message, source)


def _same_device(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str, source: str) -> None:
    # the real checks are `t.is_cuda()`; the fake stands on u's / x's device instead of CUDA
    _need(t.device == ref.device, KernelCheckError,
          f"{name} is on {t.device}, {ref_name} on {ref.device}: the kernel needs every tensor on {ref_name}'s "
          f"(CUDA) device", source)


def _shape(name: str, t: torch.Tensor, expected: tuple, meaning: str, source: str) -> None:
    _need(tuple(t.shape) == tuple(expected), KernelCheckError,
          f"{name} must have shape {meaning} = {tuple(expected)}, got {tuple(t.shape)}", source)


def _last_dim_contiguous(name: str, t: torch.Tensor, source: str) -> None:
    _need(t.stride(-1) == 1 or t.size(-1) == 1, KernelCheckError,
          f"{name} must be contiguous in its last dimension (stride(-1) == 1), got strides {tuple(t.stride())}",
          source)


def _rows_aligned(name: str, t: torch.Tensor, vector_bytes: int, why: str, source: str) -> None:
    """Every row (last-dimension run) of ``t`` starts on a ``vector_bytes`` boundary."""
    item = t.element_size()
    offsets = [t.data_ptr()] + [s * item for s, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1]
    _need(all(o % vector_bytes == 0 for o in offsets), KernelLaunchError,
          f"{name}: {why} reads {vector_bytes}-byte vectors, so every row must start on a {vector_bytes}-byte "
          f"boundary (data_ptr % {vector_bytes} = {t.data_ptr() % vector_bytes}, strides {tuple(t.stride())}, "
          f"{item}-byte elements): misaligned address on the GPU", source)


# ---------------------------------------------------------------------------------------------
# mamba-ssm: selective_scan_fn
# ---------------------------------------------------------------------------------------------

def _scan_tile(seqlen: int) -> tuple[int, int]:
    """(threads, items per thread) the forward kernel is launched with for this length (CUDA build;
    selective_scan_fwd_kernel.cuh:354-363)."""
    if seqlen <= 128:
        return 32, 4
    if seqlen <= 256:
        return 32, 8
    if seqlen <= 512:
        return 32, 16
    if seqlen <= 1024:
        return 64, 16
    return 128, 16


def check_selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """The preconditions of ``selective_scan_cuda.fwd`` on the tensors the wrapper passes it (B and
    C already 4-D when input-dependent). Raises :class:`KernelContractError` at the first violation."""
    input_type, weight_type = u.dtype, A.dtype
    _need(input_type in FLOATS, KernelCheckError,
          f"u has dtype {input_type}; the kernel takes float32, float16 or bfloat16", f"{SS_CPP}:235")
    _need(weight_type in (torch.float32, torch.complex64), KernelCheckError,
          f"A has dtype {weight_type}; the kernel takes float32 or complex64 (cast A to float32)", f"{SS_CPP}:236")
    variable_b, variable_c = B.dim() >= 3, C.dim() >= 3
    is_complex = weight_type == torch.complex64
    _need(delta.dtype == input_type, KernelCheckError,
          f"delta has dtype {delta.dtype} but u has {input_type}: u, delta (and z) must share one dtype",
          f"{SS_CPP}:242")
    for name, t, variable, line in (("B", B, variable_b, 243), ("C", C, variable_c, 244)):
        want = input_type if variable else weight_type
        kind = "input-dependent (batch, [groups,] N, L)" if variable else "constant (dim, N)"
        _need(t.dtype == want, KernelCheckError,
              f"{name} is {kind} with dtype {t.dtype}, must be {want} (" +
              ("u's dtype" if variable else "A's dtype") + ")", f"{SS_CPP}:{line}")
    for name, t, line in (("delta", delta, 247), ("A", A, 248), ("B", B, 249), ("C", C, 250)):
        _same_device(name, t, u, "u", f"{SS_CPP}:{line}")
    _last_dim_contiguous("u", u, f"{SS_CPP}:252")
    _last_dim_contiguous("delta", delta, f"{SS_CPP}:253")
    _need(A.dim() >= 2, KernelIndexError,
          f"A must be (dim, N); A.size(1) is read but A has shape {tuple(A.shape)}", f"{SS_CPP}:259")
    dstate = A.shape[1]
    n_groups = B.shape[1] if variable_b else 1
    _need(dstate <= MAX_DSTATE, KernelCheckError,
          f"A has N = A.shape[1] = {dstate} states; the kernel supports at most {MAX_DSTATE}", f"{SS_CPP}:262")
    _need(u.dim() == 3, KernelCheckError,
          f"u must be (batch, dim, seqlen), got shape {tuple(u.shape)}", f"{SS_CPP}:264")
    batch, dim, seqlen = u.shape
    _shape("delta", delta, (batch, dim, seqlen), "u's (batch, dim, seqlen)", f"{SS_CPP}:265")
    _shape("A", A, (dim, dstate), "(dim, N)", f"{SS_CPP}:266")
    length = seqlen * 2 if is_complex else seqlen
    for name, t, variable, lines in (("B", B, variable_b, (268, 270, 271)), ("C", C, variable_c, (274, 276, 277))):
        if not variable:
            _shape(name, t, (dim, dstate), "(dim, N) (constant)", f"{SS_CPP}:{lines[0]}")
            continue
        _shape(name, t, (batch, n_groups, dstate, length),
               "(batch, groups, N, " + ("2*seqlen" if is_complex else "seqlen") + ")" +
               (" with B's groups" if name == "C" else ""), f"{SS_CPP}:{lines[1]}")
        _last_dim_contiguous(name, t, f"{SS_CPP}:{lines[2]}")
    for name, t, first in (("D", D, 282), ("delta_bias", delta_bias, 290)):
        if t is None:
            continue
        _need(t.dtype == torch.float32, KernelCheckError,
              f"{name} has dtype {t.dtype}; the kernel reads it as float32 (pass {name}.float())", f"{SS_CPP}:{first}")
        _same_device(name, t, u, "u", f"{SS_CPP}:{first + 1}")
        _last_dim_contiguous(name, t, f"{SS_CPP}:{first + 2}")
        _shape(name, t, (dim,), "(dim,)", f"{SS_CPP}:{first + 3}")
    if z is not None:
        _need(z.dtype == input_type, KernelCheckError,
              f"z has dtype {z.dtype} but u has {input_type}: u, delta and z must share one dtype", f"{SS_CPP}:300")
        _same_device("z", z, u, "u", f"{SS_CPP}:301")
        _last_dim_contiguous("z", z, f"{SS_CPP}:302")
        _shape("z", z, (batch, dim, seqlen), "u's (batch, dim, seqlen)", f"{SS_CPP}:303")
    # -- not checked by the real code, but the kernel cannot run it
    _need(dim <= MAX_GRID_Y, KernelLaunchError,
          f"u has dim = {dim} channels; the forward kernel launches grid (batch, dim) and CUDA allows at most "
          f"{MAX_GRID_Y} in y", f"{SS_FWD}:322")
    if variable_b or variable_c:
        groups = n_groups if variable_b else C.shape[1]
        _need(groups >= 1 and dim % groups == 0, KernelLaunchError,
              f"B/C have {groups} groups, which do not divide dim = {dim}: channel d reads group "
              f"d // (dim // groups), past the last group (unchecked there)", f"{SS_CPP}:93, {SS_FWD}:104")
    threads, items = _scan_tile(seqlen)
    if seqlen % (threads * items) == 0:  # kIsEvenLen: u, delta, z, B, C rows are read as vectors
        elems = 4 if u.element_size() == 4 else min(8, items)
        for name, t in (("u", u), ("delta", delta), ("z", z), ("B", B if variable_b else None),
                        ("C", C if variable_c else None)):
            if t is not None:
                _rows_aligned(name, t, t.element_size() * elems,
                              f"at seqlen {seqlen} (a multiple of {threads * items}) the kernel",
                              f"{SS_FWD}:315, {SS_COMMON}:183-188")


def make_selective_scan_fn(compute: Callable = selective_scan_sequential, calls: list | None = None) -> Callable:
    """A fake ``selective_scan_fn`` that computes with ``compute`` (mamba-ssm's argument convention;
    default: the sequential reference). Each call appends its arguments' shapes and dtypes to ``calls``."""

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        if calls is not None:
            calls.append({k: (tuple(t.shape), t.dtype) for k, t in
                          dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias).items()
                          if t is not None})
        # what SelectiveScanFn.forward does before calling the extension (selective_scan_interface.py:40-57)
        u = u if u.stride(-1) == 1 else u.contiguous()
        delta = delta if delta.stride(-1) == 1 else delta.contiguous()
        D = None if D is None else D.contiguous()
        B = B if B.stride(-1) == 1 else B.contiguous()
        C = C if C.stride(-1) == 1 else C.contiguous()
        z = z if z is None or z.stride(-1) == 1 else z.contiguous()
        B = B.unsqueeze(1) if B.dim() == 3 else B
        C = C.unsqueeze(1) if C.dim() == 3 else C
        check_selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias)
        return _scan_compute(compute, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                             bool(return_last_state))

    return selective_scan_fn


def _scan_compute(compute, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    if A.is_complex() or B.dim() == 2 or C.dim() == 2:
        raise FakeCannotCompute("the fake computes real A with input-dependent B and C only")
    dim, groups = u.shape[1], B.shape[1]
    per = dim // groups
    ys, lasts = [], []
    with torch.autocast(u.device.type, enabled=False):
        for g in range(groups):
            ch = slice(g * per, (g + 1) * per)
            y, last = compute(u[:, ch], delta[:, ch], A[ch], B[:, g], C[:, g],
                              D=None if D is None else D[ch], z=None if z is None else z[:, ch],
                              delta_bias=None if delta_bias is None else delta_bias[ch],
                              delta_softplus=delta_softplus, return_last_state=True)
            ys.append(y)
            lasts.append(last)
        # the extension allocates out = empty_like(delta), out_z = empty_like(z) (selective_scan.cpp:304, 311)
        out = torch.empty_like(z if z is not None else delta)
        out.copy_(torch.cat(ys, 1) if groups > 1 else ys[0])
    if not return_last_state:
        return out
    # last_state = x[:, :, -1, 1::2], float32; its gradient "is not considered in the backward pass"
    last = (torch.cat(lasts, 1) if groups > 1 else lasts[0]).detach().float()
    return out, last


# ---------------------------------------------------------------------------------------------
# causal-conv1d: causal_conv1d_fn
# ---------------------------------------------------------------------------------------------

def check_causal_conv1d_fwd(x, weight, bias=None, seq_idx=None, initial_states=None, final_states_out=None) -> None:
    """The preconditions of ``causal_conv1d_cuda.causal_conv1d_fwd`` on the tensors the wrapper passes it."""
    input_type, weight_type = x.dtype, weight.dtype
    _need(input_type in FLOATS, KernelCheckError,
          f"x has dtype {input_type}; the kernel takes float32, float16 or bfloat16", f"{CC_CPP}:160")
    _need(weight_type in FLOATS, KernelCheckError,
          f"weight has dtype {weight_type}; the kernel takes float32, float16 or bfloat16", f"{CC_CPP}:161")
    _same_device("weight", weight, x, "x", f"{CC_CPP}:164")
    _need(weight.dim() >= 1, KernelIndexError, "weight must be (dim, width), got a 0-d tensor", f"{CC_CPP}:170")
    _need(x.dim() == 3, KernelCheckError, f"x must be (batch, dim, seqlen), got shape {tuple(x.shape)}",
          f"{CC_CPP}:172")
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    _shape("weight", weight, (dim, width), "(dim, width) (an nn.Conv1d weight (dim, 1, width) needs .squeeze(1))",
           f"{CC_CPP}:173")
    _need(x.stride(2) == 1 or x.stride(1) == 1, KernelCheckError,
          f"x must be contiguous along seqlen or along dim, got strides {tuple(x.stride())}", f"{CC_CPP}:175")
    channel_last = x.stride(1) == 1 and x.stride(2) > 1
    if channel_last:
        _need(dim % 8 == 0, KernelCheckError,
              f"x is channel-last (stride(1) == 1) with dim = {dim} channels; channel-last needs dim divisible by 8",
              f"{CC_CPP}:179")
        _need(x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, KernelCheckError,
              f"x is channel-last; x.stride(0) and x.stride(2) must be multiples of 8, got {tuple(x.stride())}",
              f"{CC_CPP}:180")
    _need(2 <= width <= 4, KernelCheckError,
          f"weight has width {width} (weight.shape[-1]); the kernel supports widths 2 to 4", f"{CC_CPP}:182")
    if bias is not None:
        _need(bias.dtype == weight_type, KernelCheckError,
              f"bias has dtype {bias.dtype} but weight has {weight_type}: they must match", f"{CC_CPP}:186")
        _same_device("bias", bias, x, "x", f"{CC_CPP}:187")
        _need(bias.stride(-1) == 1, KernelCheckError, f"bias must be contiguous, got strides {tuple(bias.stride())}",
              f"{CC_CPP}:188")
        _shape("bias", bias, (dim,), "(dim,)", f"{CC_CPP}:189")
    if seq_idx is not None:
        _need(channel_last, KernelCheckError, "seq_idx is only supported with channel-last x (x.stride(1) == 1)",
              f"{CC_CPP}:193")
        _need(seq_idx.dtype == torch.int32, KernelCheckError, f"seq_idx must be int32, got {seq_idx.dtype}",
              f"{CC_CPP}:195")
        _same_device("seq_idx", seq_idx, x, "x", f"{CC_CPP}:196")
        _need(seq_idx.is_contiguous(), KernelCheckError, "seq_idx must be contiguous", f"{CC_CPP}:197")
        _shape("seq_idx", seq_idx, (batch, seqlen), "(batch, seqlen)", f"{CC_CPP}:198")
    for name, t, first in (("initial_states", initial_states, 213), ("final_states_out", final_states_out, 228)):
        if t is None:
            continue
        _need(channel_last, KernelCheckError, f"{name} is only supported with channel-last x (x.stride(1) == 1)",
              f"{CC_CPP}:{first}")
        _need(t.dtype == input_type, KernelCheckError, f"{name} has dtype {t.dtype} but x has {input_type}",
              f"{CC_CPP}:{first + 2}")
        _same_device(name, t, x, "x", f"{CC_CPP}:{first + 3}")
        _shape(name, t, (batch, dim, width - 1), "(batch, dim, width - 1)", f"{CC_CPP}:{first + 4}")
        _need(t.stride(1) == 1, KernelCheckError, f"{name} must have stride(1) == 1, got {tuple(t.stride())}",
              f"{CC_CPP}:{first + 5}")
    # -- not checked by the real code, but the kernel cannot run it
    if not channel_last:
        _need(dim <= MAX_GRID_Y, KernelLaunchError,
              f"x has dim = {dim} channels; the kernel launches grid (batch, dim) and CUDA allows at most "
              f"{MAX_GRID_Y} in y", f"{CC_FWD}:145")
        elems = 4 if x.element_size() == 4 else 8
        if seqlen % elems == 0:  # kIsVecLoad: rows of x are read as 16-byte vectors
            _rows_aligned("x", x, 16, f"at seqlen {seqlen} (a multiple of {elems}) the kernel", f"{CC_FWD}:142, 89-90")


def make_causal_conv1d_fn(calls: list | None = None) -> Callable:
    """A fake ``causal_conv1d_fn`` (computed with :func:`causal_conv1d_torch` in float32). Each call
    appends its arguments' shapes, dtypes and x's strides to ``calls``."""

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        if calls is not None:
            calls.append({"x": (tuple(x.shape), x.dtype, tuple(x.stride())),
                          "weight": (tuple(weight.shape), weight.dtype),
                          "bias": None if bias is None else (tuple(bias.shape), bias.dtype),
                          "activation": activation})
        # CausalConv1dFn.forward before calling the extension (causal_conv1d_interface.py:22-54)
        _need(activation in (None, "silu", "swish"), KernelNotImplementedError,
              f"activation must be None, 'silu' or 'swish', got {activation!r}", f"{CC_PY}:22-23")
        _need(x.dim() >= 3, KernelIndexError, f"x must be (batch, dim, seqlen); x.stride(2) is read but x has shape "
                                              f"{tuple(x.shape)}", f"{CC_PY}:24")
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        bias = bias.contiguous() if bias is not None else None
        if seq_idx is not None:
            _need(initial_states is None, KernelAssertionError, "initial_states must be None if seq_idx is given",
                  f"{CC_PY}:28-30")
            _need(not return_final_states, KernelAssertionError, "return_final_states needs seq_idx=None",
                  f"{CC_PY}:31-33")
            seq_idx = seq_idx.contiguous()
        if initial_states is not None and initial_states.stride(2) != 1 and initial_states.stride(1) != 1:
            initial_states = initial_states.contiguous()
        if return_final_states:
            _need(x.stride(1) == 1, KernelAssertionError,
                  f"return_final_states needs channel-last x (x.stride(1) == 1), got strides {tuple(x.stride())}",
                  f"{CC_PY}:40-42")
            if final_states_out is not None:
                _need(final_states_out.stride(2) == 1 or final_states_out.stride(1) == 1, KernelAssertionError,
                      "final_states_out must be contiguous along one of its last two dimensions", f"{CC_PY}:44-46")
            else:
                final_states_out = torch.empty(x.shape[0], weight.shape[1] - 1, x.shape[1], device=x.device,
                                               dtype=x.dtype).transpose(1, 2)
        else:
            final_states_out = None
        check_causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, final_states_out)
        if seq_idx is not None:
            raise FakeCannotCompute("the fake does not compute seq_idx (packed sequences)")
        width = weight.shape[1]
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            if initial_states is not None:
                xf = torch.cat([initial_states.float(), xf], dim=-1)
            y = causal_conv1d_torch(xf, weight.float(), None if bias is None else bias.float(), activation)
            out = torch.empty_like(x)  # cpp_functions.py: out = torch.empty_like(x)
            out.copy_(y[..., xf.shape[-1] - x.shape[-1]:])
            if final_states_out is None:
                return out
            tail = torch.nn.functional.pad(xf, (max(0, width - 1 - xf.shape[-1]), 0))[..., -(width - 1):]
            final_states_out.copy_(tail)
        return out, final_states_out

    return causal_conv1d_fn


# ---------------------------------------------------------------------------------------------
# routing nnunet_ext.ops' `cuda` back-end to the fakes
# ---------------------------------------------------------------------------------------------

def route_cuda_backend_to_fakes(monkeypatch, scan_compute: Callable = selective_scan_sequential) -> dict:
    """Make the ``cuda`` back-end run on CPU tensors through the fakes, and force it.

    The fakes stand in for the imported packages (``sys.modules``), CPU tensors count as CUDA
    tensors for the back-end choice (``backends._device_type``), ``$NNUNET_EXT_SCAN_BACKEND`` is
    ``cuda`` and the probes are cleared. Returns ``{"scan": [...], "conv": [...]}``, one entry per
    call of each fake.
    """
    calls = {"scan": [], "conv": []}
    scan_mod = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    scan_mod.selective_scan_fn = make_selective_scan_fn(scan_compute, calls["scan"])
    conv_mod = types.ModuleType("causal_conv1d")
    conv_mod.causal_conv1d_fn = make_causal_conv1d_fn(calls["conv"])
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "causal_conv1d")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", scan_mod)
    monkeypatch.setitem(sys.modules, "causal_conv1d", conv_mod)
    real = backends._device_type
    monkeypatch.setattr(backends, "_device_type", lambda d: "cuda" if real(d) == "cpu" else real(d))
    monkeypatch.setenv(ENV_VAR, "cuda")
    backends.clear_cache()
    return calls
