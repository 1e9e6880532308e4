"""Argument checks shared by the commands: each bad value stops with one line
``nnunet-ext <command>: <option> ...`` that names the value and what to give instead, before
anything is computed or written."""

from __future__ import annotations

import math
from typing import Sequence


def fail(command: str, message: str) -> SystemExit:
    """The exception to raise: ``raise fail("demo", "...")``."""
    return SystemExit(f"nnunet-ext {command}: {message}")


def at_least(command: str, option: str, value: int | float | None, low: int | float, meaning: str = "") -> None:
    """``value >= low`` (None: not given, fine)."""
    if value is not None and not value >= low:
        raise fail(command, f"{option} must be >= {low:g}{meaning}, got {value:g}")


def finite_range(command: str, option: str, value: float, low: float, high: float, meaning: str = "") -> None:
    """``low <= value <= high`` and finite."""
    if not (math.isfinite(value) and low <= value <= high):
        raise fail(command, f"{option} must be a number from {low:g} to {high:g}{meaning}, got {value:g}")


def patch_and_spacing(command: str, patch: Sequence[int], spacing: Sequence[float], option: str = "--patch"):
    """A positive patch and spacing, of a size nnU-Net's planner would use as it is (divisible by
    its total stride, at least one down-sampling stage), named ``option`` in the messages; returns the
    :class:`~nnunet_ext.architectures.PlanSpec` of that plan."""
    shown = " ".join(map(str, patch))
    if any(p < 1 for p in patch):
        raise fail(command, f"{option} takes voxel counts >= 1 (z y x), got {shown}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise fail(command, f"--spacing takes voxel sizes in mm > 0 (z y x), got {' '.join(f'{s:g}' for s in spacing)}")
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    from nnunet_ext.architectures import PlanSpec

    spec = PlanSpec.from_patch(patch, spacing)
    if all(s == 1 for stride in spec.strides for s in stride):
        raise fail(command, f"{option} {shown} is too small for a U-Net: nnU-Net's planner makes no down-sampling "
                            f"stage for it (feature maps keep >= 4 voxels per axis); give a larger patch "
                            f"(e.g. {option} 32 32 32)")
    bad = [a for a in range(3) if patch[a] % spec.total_stride[a]]
    if bad:
        a, d = bad[0], spec.total_stride[bad[0]]
        _, _, _, planned, _ = get_pool_and_conv_props(list(spacing), list(patch), 4, 999999)
        raise fail(command, f"{option} {shown} is not divisible by the total stride "
                            f"{' '.join(map(str, spec.total_stride))} nnU-Net's planner gives it (axis {'ZYX'[a]}: "
                            f"{patch[a]} % {d} = {patch[a] % d}); nnU-Net would plan {option} "
                            f"{' '.join(str(int(p)) for p in planned)}")
    return spec


def scan_backend(command: str, device: str | None = None) -> None:
    """``$NNUNET_EXT_SCAN_BACKEND`` names a back-end that can run on ``device`` (one line otherwise;
    :func:`nnunet_ext.ops.backends.check_backend_setting`)."""
    from nnunet_ext.ops.backends import BackendUnavailableError, check_backend_setting

    try:
        check_backend_setting(device)
    except (ValueError, BackendUnavailableError) as e:
        raise fail(command, str(e)) from None
