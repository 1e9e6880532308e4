"""Low-level ops: the selective scan (CUDA kernel / Triton kernel / fused CPU kernel / PyTorch) and
causal conv1d.

Public API (one signature each, whatever the back-end):

- ``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
  return_last_state=False, backend=None)`` -- mamba-ssm's ``selective_scan_fn`` convention.
- ``causal_conv1d(x, weight, bias=None, activation=None, backend=None)`` -- ``causal_conv1d_fn``'s.

Back-end selection (``backend=`` or ``$NNUNET_EXT_SCAN_BACKEND``: auto | cuda | triton | fused |
torch; ``auto`` is cuda -> triton -> torch for CUDA tensors, fused -> torch for CPU tensors) lives
in :mod:`nnunet_ext.ops.backends`; when ``auto`` falls back to a slower back-end it says why, once
per process (:class:`SlowBackendWarning`). The sequential scan every back-end is tested against is
:func:`nnunet_ext.ops.reference.selective_scan_sequential`. Under ``torch.compile`` both ops are
opaque to dynamo (:mod:`nnunet_ext.ops._opaque`). Note: the function names shadow the module
names ``nnunet_ext.ops.selective_scan`` / ``nnunet_ext.ops.causal_conv1d``; reach the modules
through ``sys.modules`` or ``importlib.import_module``.
"""

from nnunet_ext.ops.backends import (
    ENV_VAR, BackendUnavailableError, SlowBackendWarning, available_backends, resolve_backend)
from nnunet_ext.ops.causal_conv1d import causal_conv1d
from nnunet_ext.ops.selective_scan import selective_scan

__all__ = ["selective_scan", "causal_conv1d", "available_backends", "resolve_backend",
           "BackendUnavailableError", "SlowBackendWarning", "ENV_VAR"]
