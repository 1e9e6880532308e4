"""What a network needs to know of nnU-Net's plans, in one small object.

Every size-dependent part of our networks (token counts, position embeddings, EPA's token
projection, ToM's slice orders, down-sampling strides) is derived from a :class:`PlanSpec`.
A spec comes either from nnU-Net's ``ConfigurationManager`` (training and inference) or from a
bare patch size through nnU-Net's own topology rule (``nnunet-ext summary``, tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

Shape = tuple[int, ...]


class PlanError(ValueError):
    """A plan (configuration, patch size, strides) that a network cannot be built for.

    The message always names what to change.
    """


def _tuple3(v: Sequence, what: str) -> tuple:
    t = tuple(v)
    if len(t) != 3:
        raise PlanError(f"{what} must have 3 entries (z, y, x) for a 3D network, got {list(t)}")
    return t


@dataclass(frozen=True)
class PlanSpec:
    """The parts of an nnU-Net configuration that shape a network.

    Attributes:
        patch_size: (Z, Y, X) voxels of one training patch.
        strides: nnU-Net's ``pool_op_kernel_sizes``, one (sz, sy, sx) per encoder stage; the
            first is usually (1, 1, 1). Their product is the planner's total stride.
        spacing: (Z, Y, X) voxel spacing in mm of the configuration.
        features_per_stage: nnU-Net's planned widths (only used by networks that follow them).
        configuration: name of the configuration (``3d_fullres``, ``3d_lowres``, ...), for messages.
    """

    patch_size: Shape
    strides: tuple[Shape, ...]
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    features_per_stage: tuple[int, ...] | None = None
    configuration: str = "3d_fullres"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in _tuple3(self.patch_size, "patch_size")))
        object.__setattr__(self, "strides", tuple(tuple(int(s) for s in _tuple3(st, "each stride")) for st in self.strides))
        object.__setattr__(self, "spacing", tuple(float(s) for s in _tuple3(self.spacing, "spacing")))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_configuration(cls, configuration_manager, configuration: str | None = None) -> "PlanSpec":
        """Read a spec from an nnU-Net ``ConfigurationManager``.

        Raises :class:`PlanError` for a 2D configuration.
        """
        cm = configuration_manager
        name = configuration or cm.configuration.get("data_identifier", "this configuration")
        patch = tuple(cm.patch_size)
        if len(patch) != 3:
            raise PlanError(f"configuration '{name}' is 2D (patch {list(patch)}); these networks are 3D")
        kwargs = cm.network_arch_init_kwargs or {}
        return cls(
            patch_size=patch,
            strides=tuple(tuple(s) for s in cm.pool_op_kernel_sizes),
            spacing=tuple(cm.spacing),
            features_per_stage=tuple(kwargs["features_per_stage"]) if "features_per_stage" in kwargs else None,
            configuration=name,
        )

    @classmethod
    def from_patch(cls, patch_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   min_feature_map_size: int = 4) -> "PlanSpec":
        """Strides as nnU-Net's planner would choose them for this patch and spacing.

        Uses nnU-Net's own topology function (pool while an axis stays >= ``min_feature_map_size``
        and is not much coarser than the finest axis). If nnU-Net would change the patch to make
        it divisible, the given patch is kept (the network's divisibility check then reports it).
        """
        from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

        patch_size = _tuple3(patch_size, "patch_size")
        _, pool, _, _, _ = get_pool_and_conv_props(list(spacing), list(patch_size), min_feature_map_size, 999999)
        n = len(pool)
        features = tuple(min(32 * 2 ** i, 320) for i in range(n))
        return cls(patch_size=patch_size, strides=tuple(tuple(p) for p in pool), spacing=tuple(spacing),
                   features_per_stage=features)

    # ------------------------------------------------------------------ derived sizes
    @property
    def total_stride(self) -> Shape:
        """Per-axis product of all strides."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(3))

    def check_divisible(self, divisor: Sequence[int], network: str) -> None:
        """Raise :class:`PlanError` naming the axis and the nearest valid sizes if the patch is not
        divisible by ``divisor`` (the network's total stride)."""
        axes = "ZYX"
        for a, (p, d) in enumerate(zip(self.patch_size, divisor)):
            if p % d:
                lo, hi = (p // d) * d, (p // d + 1) * d
                sizes = f"{lo} or {hi}" if lo > 0 else f"{hi}"
                raise PlanError(
                    f"{network}: patch size {list(self.patch_size)} is not divisible by the network's total "
                    f"stride {list(divisor)} on axis {a} ({axes[a]}: {p} % {d} = {p % d}). "
                    f"Set patch_size[{a}] to a multiple of {d} (e.g. {sizes}) in the configuration "
                    f"'{self.configuration}' of your plans file, or re-plan with nnUNetv2_plan_experiment.")


def spatial_after(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[Shape]:
    """Feature-map sizes after each stride: ``[patch // s0, patch // (s0*s1), ...]``."""
    out, cur = [], list(patch_size)
    for s in strides:
        cur = [c // k for c, k in zip(cur, s)]
        out.append(tuple(cur))
    return out


def deepest_first_strides(total_stride: Sequence[int], downsamplings: int) -> tuple[Shape, ...]:
    """``downsamplings`` strides (shallowest first) that spread a plan's total stride, deepest first.

    Per axis, the factors of 2 in ``total_stride`` (nnU-Net's product of ``pool_op_kernel_sizes``)
    are handed out from the deepest down-sampling upwards, at most one (stride 2) each; the others
    get stride 1. So an axis the planner pools less (thick slices, short extent) is strided only in
    the deepest levels, as nnU-Net does, and a plan deeper than the network is capped at
    ``2 ** downsamplings`` per axis. Used by MISSU and SegResMamba.

    >>> deepest_first_strides((4, 32, 32), 3)
    ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    """
    strided = [min(_twos(t), downsamplings) for t in total_stride]
    return tuple(tuple(2 if level >= downsamplings - k else 1 for k in strided) for level in range(downsamplings))


def stem_first_strides(total_stride: Sequence[int], downsamplings: int) -> tuple[Shape, ...]:
    """``downsamplings`` strides (stem first) for a network whose stem always embeds with stride 2.

    Per axis a, let m_a = min(factors of 2 in ``total_stride[a]``, ``downsamplings``) and
    K = max_a m_a. Only the first K down-samplings stride; the deeper ones keep stride 1 (a plan
    shallower than the network leaves its deepest stages at the plan's coarsest resolution, where
    nnU-Net's own bottleneck is). Among those K, the stem strides every axis with m_a >= 1 and an
    axis's other m_a - 1 factors go to the deepest of them, so an axis the planner pools less
    (thick slices) is strided late, as nnU-Net does. The per-axis product is 2 ** m_a, as with
    :func:`deepest_first_strides`; the two agree when every strided axis has m_a = ``downsamplings``.

    >>> stem_first_strides((8, 8, 8), 4)
    ((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1))
    >>> stem_first_strides((4, 64, 64), 4)
    ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    """
    strided = [min(_twos(t), downsamplings) for t in total_stride]
    active = max(strided, default=0)
    return tuple(tuple(2 if k > 0 and (level == 0 or active - k < level < active) else 1 for k in strided)
                 for level in range(downsamplings))


def _twos(n: int) -> int:
    """Number of factors 2 in ``n``."""
    k = 0
    while n > 1 and n % 2 == 0:
        n, k = n // 2, k + 1
    return k


def stride_product(strides: Sequence[Sequence[int]]) -> Shape:
    """Per-axis product of a list of strides (a network's total stride)."""
    return tuple(math.prod(s[a] for s in strides) for a in range(3))


def cumulative_strides(strides: Sequence[Sequence[int]]) -> list[Shape]:
    """Total stride after each stride: ``[s0, s0*s1, s0*s1*s2, ...]`` per axis."""
    out, acc = [], (1, 1, 1)
    for s in strides:
        acc = tuple(a * int(k) for a, k in zip(acc, s))
        out.append(acc)
    return out
