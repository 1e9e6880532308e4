"""Tolerances for comparing back-ends: float64 to float64, float32 to the float64 truth.

float32: a value computed by a chain of ``n`` rounded float32 operations (sums and products whose
terms are at most the result's magnitude) is off by about ``sqrt(n) * eps32`` relative to that
magnitude when the rounding errors are independent. Every output and gradient of the scan is such
a chain: the recurrence runs over at most B*L tokens (gradients of A, D, ... also sum over the
batch), a state sum or projection adds its fan-in, and a fixed number of elementwise operations
(exp, softplus, SiLU, products) adds a few more. So the allowed error is

    F32_SAFETY * sqrt(n_ops) * eps32 * max |truth|,      n_ops = B*L + fan_in + F32_ELEMENTWISE_OPS

with the truth computed in float64 from the same float32-rounded inputs (input rounding is not
counted). F32_SAFETY covers correlated roundings and a max over many elements.

float64: two float64 computations of the same quantity differ by ~1e-16 relative; the tolerance
F64_RTOL is far above that and far below anything float32 (~1e-7) or a wrong formula can reach.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps
F32_SAFETY = 8.0
F32_ELEMENTWISE_OPS = 16
F64_RTOL = 1e-10


def f32_tolerance(n_ops: int, magnitude: float) -> float:
    """Allowed max abs error of a float32 result from ``n_ops`` chained operations (see module)."""
    return F32_SAFETY * math.sqrt(n_ops + F32_ELEMENTWISE_OPS) * EPS32 * magnitude


def _magnitude(truth: torch.Tensor) -> float:
    return truth.detach().double().abs().max().item() if truth.numel() else 0.0


def assert_f32_close(ours: torch.Tensor, truth: torch.Tensor, n_ops: int, what: str) -> None:
    """``ours`` (float32 computation) against the float64 ``truth`` (same shape)."""
    assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(ours).all(), f"{what}: not finite"
    mag = _magnitude(truth)
    err = (ours.detach().double() - truth.detach().double()).abs().max().item() if truth.numel() else 0.0
    # an exactly-zero truth (e.g. dA at L = 1) is matched to float32's smallest normal number
    tol = f32_tolerance(n_ops, mag) if mag > 0 else torch.finfo(torch.float32).tiny
    assert err <= tol, (f"{what}: max abs error {err:.3g} > {tol:.3g} "
                        f"(= {F32_SAFETY} * sqrt({n_ops} + {F32_ELEMENTWISE_OPS}) * eps32 * {mag:.3g})")


def assert_f64_close(ours: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    """Two float64 computations of the same quantity: within :data:`F64_RTOL` of max |truth|."""
    assert ours.dtype == truth.dtype == torch.float64, f"{what}: {ours.dtype} / {truth.dtype}"
    assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    err = (ours.detach() - truth.detach()).abs().max().item() if truth.numel() else 0.0
    mag = _magnitude(truth)
    assert err <= F64_RTOL * mag or err == 0.0, f"{what}: max abs error {err:.3g} > {F64_RTOL} x {mag:.3g}"
