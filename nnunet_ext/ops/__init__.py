"""Low-level ops: the selective scan (CUDA kernel / fused CPU kernel / PyTorch) and causal conv1d.

Public API (one signature each, whatever the back-end):

- ``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
  return_last_state=False, backend=None)`` -- mamba-ssm's ``selective_scan_fn`` convention.
- ``causal_conv1d(x, weight, bias=None, activation=None, backend=None)`` -- ``causal_conv1d_fn``'s.
"""
