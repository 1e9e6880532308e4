"""What a network needs to know of nnU-Net's plans, and how a plan becomes a network's strides.

Every size-dependent part of our networks (token counts, position embeddings, EPA's token
projection, ToM's slice orders, down-sampling strides) is derived from a :class:`PlanSpec`.
A spec comes either from nnU-Net's ``ConfigurationManager`` (training and inference) or from a
bare patch size through nnU-Net's own topology rule (``nnunet-ext summary``, tests).

From a plan to a network's strides
----------------------------------
nnU-Net's planner picks ``pool_op_kernel_sizes`` (:attr:`PlanSpec.strides`) for its own U-Net: it
pools an axis while the axis keeps at least 4 voxels and is not much coarser than the finest one,
so a thick-slice axis is pooled later and less often. The per-axis product is the plan's total
stride (:attr:`PlanSpec.total_stride`), and nnU-Net makes the patch a multiple of it.

A network registers how many down-samplings it has (``downsamplings``) and one *stride rule*
that spreads the plan's total stride over them (see :func:`~.registry.register_architecture`).
A rule returns one (sz, sy, sx) per down-sampling, shallowest first. The registry derives the
strides, hands them to the network's builder, and checks that the patch is divisible by their
per-axis product (the network's total stride). Every rule below keeps two properties:

- an axis the planner pools less (thick slices) is strided late: apart from a striding stem,
  its factors go to the deepest down-samplings, as nnU-Net pools such an axis last;
- the network's total stride divides the plan's, so every patch nnU-Net plans is valid. A
  down-sampling takes one factor per axis (2 in nnU-Net's plans), so a plan that pools more
  often than the network down-samples is capped, except by a patch-embedding stem, which takes
  what the inner down-samplings leave.

The rules (``rule(spec, downsamplings) -> strides``):

- :func:`plan_strides`: the plan's own strides (networks that follow nnU-Net's topology).
- :func:`deepest_first_strides`: one factor 2 per down-sampling from the deepest upwards
  (MISSU, SegResMamba: their stems do not down-sample).
- :func:`stem_first_strides`: the stem strides every pooled axis, the other factors go to the
  deepest of the down-samplings the plan needs (SegMamba: its stem always embeds with stride 2).
- :func:`stem_remainder_strides`: the stem reserves one factor, the inner down-samplings take one
  factor each from the deepest upwards, the stem takes what is left (UNETR++: its stem is a
  patch embedding, and its total stride equals the plan's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Shape = tuple[int, ...]
Strides = tuple[Shape, ...]


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
            first is usually (1, 1, 1).
        spacing: (Z, Y, X) voxel spacing in mm of the configuration.
        features_per_stage: nnU-Net's planned widths (only used by networks that follow them).
        configuration: name of the configuration (``3d_fullres``, ``3d_lowres``, ...), for messages.
    """

    patch_size: Shape
    strides: Strides
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    features_per_stage: tuple[int, ...] | None = None
    configuration: str = "3d_fullres"

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in _tuple3(self.patch_size, "patch_size")))
        object.__setattr__(self, "strides",
                           tuple(tuple(int(s) for s in _tuple3(st, "each stride")) for st in self.strides))
        object.__setattr__(self, "spacing", tuple(float(s) for s in _tuple3(self.spacing, "spacing")))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_configuration(cls, configuration_manager, configuration: str | None = None) -> "PlanSpec":
        """Read a spec from an nnU-Net ``ConfigurationManager`` (a 3D one: see
        :func:`~.registry.check_plan` for the message a 2D configuration gets)."""
        cm = configuration_manager
        kwargs = cm.network_arch_init_kwargs or {}
        return cls(
            patch_size=tuple(cm.patch_size),
            strides=tuple(tuple(s) for s in cm.pool_op_kernel_sizes),
            spacing=tuple(cm.spacing),
            features_per_stage=tuple(kwargs["features_per_stage"]) if "features_per_stage" in kwargs else None,
            configuration=configuration or cm.configuration.get("data_identifier", "this configuration"),
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
        features = tuple(min(32 * 2 ** i, 320) for i in range(len(pool)))
        return cls(patch_size=patch_size, strides=tuple(tuple(p) for p in pool), spacing=tuple(spacing),
                   features_per_stage=features)

    # ------------------------------------------------------------------ derived sizes
    @property
    def total_stride(self) -> Shape:
        """The plan's total stride: the per-axis product of :attr:`strides`."""
        return stride_product(self.strides)

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


# ---------------------------------------------------------------------------------- stride rules
def plan_strides(spec: PlanSpec, downsamplings: int | None = None) -> Strides:
    """The plan's own strides (``pool_op_kernel_sizes``); the plan decides how many, so
    ``downsamplings`` is None at registration."""
    return spec.strides


def deepest_first_strides(spec: PlanSpec, downsamplings: int) -> Strides:
    """Per axis, the factors 2 of the plan's total stride go to the deepest down-samplings, one
    each; the shallower ones get stride 1.

    For networks whose stem does not down-sample (MISSU, SegResMamba).

    Total (4, 32, 32) with 3 down-samplings -> (1, 2, 2), (2, 2, 2), (2, 2, 2).
    """
    strided = [min(_twos(t), downsamplings) for t in spec.total_stride]
    return tuple(tuple(2 if level >= downsamplings - k else 1 for k in strided) for level in range(downsamplings))


def stem_first_strides(spec: PlanSpec, downsamplings: int) -> Strides:
    """Per axis a, m_a = min(factors 2 of the plan's total stride, ``downsamplings``); K = max m_a.
    The stem (down-sampling 0) strides every axis with m_a >= 1; an axis's other m_a - 1 factors go
    to the deepest of down-samplings 1..K-1; down-samplings K and deeper keep stride 1 (a plan
    shallower than the network leaves its deepest stages at the plan's coarsest resolution, where
    nnU-Net's own bottleneck is).

    For SegMamba: its paper's stem always embeds with stride 2, and a TSMamba stage at full
    resolution would scan 8x the tokens. Leaving a shallow plan's deepest stages at its coarsest
    resolution, rather than its wider stages at high resolution, is our choice: each stage is
    twice as wide as the one before (about 4x the convolution work per voxel).

    Total (8, 8, 8), 4 down-samplings -> (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1);
    total (4, 64, 64) -> (2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2).
    """
    strided = [min(_twos(t), downsamplings) for t in spec.total_stride]
    active = max(strided, default=0)
    return tuple(tuple(2 if k > 0 and (level == 0 or active - k < level < active) else 1 for k in strided)
                 for level in range(downsamplings))


def stem_remainder_strides(spec: PlanSpec, downsamplings: int) -> Strides:
    """Per axis with total stride t > 1: the stem (down-sampling 0) reserves t's smallest prime
    factor; down-samplings ``downsamplings - 1`` .. 1 (deepest first) each take the smallest prime
    factor still left, or 1 when nothing is left; the stem takes the reserve times what remains.
    So the network's total stride is the plan's, for any factors (also a hand-edited plan's 3).

    For UNETR++: every setting of its paper tokenizes with a stem stride of at least 2, and EPA
    stages at full resolution would dominate the network's time and memory on small plans.

    Total (16, 32, 32), 4 down-samplings -> (2, 4, 4), (2, 2, 2), (2, 2, 2), (2, 2, 2);
    total (4, 32, 32) -> (2, 4, 4), (1, 2, 2), (1, 2, 2), (2, 2, 2);
    total (8, 8, 8) -> (2, 2, 2), (1, 1, 1), (2, 2, 2), (2, 2, 2).
    """
    inner = [[1, 1, 1] for _ in range(downsamplings - 1)]
    stem = []
    for axis, total in enumerate(spec.total_stride):
        reserved = _smallest_prime_factor(total)
        left = total // reserved
        for stage in reversed(range(downsamplings - 1)):
            if left > 1:
                inner[stage][axis] = _smallest_prime_factor(left)
                left //= inner[stage][axis]
        stem.append(reserved * left)
    return (tuple(stem), *(tuple(s) for s in inner))


def _twos(n: int) -> int:
    """Number of factors 2 in ``n``."""
    k = 0
    while n > 1 and n % 2 == 0:
        n, k = n // 2, k + 1
    return k


def _smallest_prime_factor(n: int) -> int:
    """Smallest prime factor of ``n`` (1 for n = 1)."""
    return next((f for f in range(2, n + 1) if n % f == 0), 1)


# ---------------------------------------------------------------------------------- stride products
def cumulative_strides(strides: Sequence[Sequence[int]]) -> list[Shape]:
    """Total stride after each stride: ``[s0, s0*s1, s0*s1*s2, ...]`` per axis."""
    out, acc = [], (1, 1, 1)
    for s in strides:
        acc = tuple(a * int(k) for a, k in zip(acc, s))
        out.append(acc)
    return out


def stride_product(strides: Sequence[Sequence[int]]) -> Shape:
    """Per-axis product of a list of strides (a network's, or a plan's, total stride)."""
    return tuple(math.prod(int(s[a]) for s in strides) for a in range(3))
