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

Synthetic plans
---------------
:func:`synthetic_plans` is the one factory of an nnU-Net plans dict for a patch (the benchmark,
``gpu-check``, the memory check, the planning example and the tests use it), with nnU-Net's
default ``architecture`` entry (:func:`default_architecture`), and :func:`synthetic_dataset_json`
its ``dataset.json``; nnU-Net's topology rule is called in one place, :func:`nnunet_topology`.

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
        patch_size = _tuple3(patch_size, "patch_size")
        pool, _ = nnunet_topology(patch_size, spacing, min_feature_map_size)
        return cls(patch_size=patch_size, strides=pool, spacing=tuple(spacing),
                   features_per_stage=tuple(nnunet_widths(len(pool))))

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


# ---------------------------------------------------------------------------------- synthetic plans
#: nnU-Net's default ExperimentPlanner (3D): UNet_base_num_features, UNet_max_features_3d,
#: UNet_blocks_per_stage_encoder / _decoder
NNUNET_BASE_FEATURES, NNUNET_MAX_FEATURES, NNUNET_CONVS_PER_STAGE = 32, 320, 2
#: the configuration :func:`synthetic_plans` writes
CONFIGURATION = "3d_fullres"


def nnunet_topology(patch_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    min_feature_map_size: int = 4) -> tuple[Strides, Strides]:
    """nnU-Net's topology rule for a 3D patch (``get_pool_and_conv_props``): (pooling strides, conv
    kernel sizes), one (z, y, x) per stage; pool an axis while it keeps at least
    ``min_feature_map_size`` voxels and is not much coarser than the finest one."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, pool, kernels, _, _ = get_pool_and_conv_props(list(spacing), list(patch_size), min_feature_map_size, 999999)
    return tuple(tuple(int(v) for v in p) for p in pool), tuple(tuple(int(v) for v in k) for k in kernels)


def nnunet_widths(stages: int) -> list[int]:
    """nnU-Net's default widths: 32 doubling per stage up to 320."""
    return [min(NNUNET_MAX_FEATURES, NNUNET_BASE_FEATURES * 2 ** i) for i in range(stages)]


def default_architecture(patch_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         strides: Sequence[Sequence[int]] | None = None) -> dict:
    """The ``architecture`` entry nnU-Net's default planner writes for a 3D patch and spacing (its
    PlainConvUNet): strides and kernels from :func:`nnunet_topology`, widths :func:`nnunet_widths`,
    two convolutions per stage. Given ``strides`` replace the planner's (kernels then 3 everywhere)."""
    if strides is None:
        strides, kernels = nnunet_topology(patch_size, spacing)
    else:
        kernels = tuple((3,) * len(s) for s in strides)
    n = len(strides)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": nnunet_widths(n), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
            "n_conv_per_stage": [NNUNET_CONVS_PER_STAGE] * n,
            "n_conv_per_stage_decoder": [NNUNET_CONVS_PER_STAGE] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def synthetic_plans(patch_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                    strides: Sequence[Sequence[int]] | None = None, batch_size: int = 2, input_channels: int = 1,
                    dataset_name: str = "Dataset999_Synthetic", with_2d: bool = False) -> dict:
    """An nnU-Net plans dict (as ``nnUNetPlans.json`` holds it) with one :data:`CONFIGURATION` of this
    patch, spacing and batch size (data identifier ``nnUNetPlans_3d_fullres``) whose architecture is
    :func:`default_architecture` (``strides`` given: these pooling strides instead of nnU-Net's rule),
    and with ``with_2d`` a ``2d`` configuration of the in-plane axes. ``continue_training`` is set as
    ``nnUNetv2_train`` sets it, so a trainer can be built from it."""
    patch, spacing = [int(p) for p in patch_size], [float(v) for v in spacing]
    architecture = default_architecture(patch, spacing, strides)

    def configuration(dims: slice, identifier: str) -> dict:
        arch = {**architecture, "arch_kwargs": dict(architecture["arch_kwargs"])}
        if dims != slice(0, 3):  # the in-plane axes of every stage
            arch["arch_kwargs"].update(conv_op="torch.nn.modules.conv.Conv2d",
                                       norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
                                       **{k: [v[dims] for v in arch["arch_kwargs"][k]]
                                          for k in ("kernel_sizes", "strides")})
        return {"data_identifier": identifier, "preprocessor_name": "DefaultPreprocessor",
                "batch_size": int(batch_size), "patch_size": patch[dims], "median_image_size_in_voxels": patch[dims],
                "spacing": spacing[dims], "normalization_schemes": ["ZScoreNormalization"] * input_channels,
                "use_mask_for_norm": [False] * input_channels, "batch_dice": False, "architecture": arch}

    configurations = {CONFIGURATION: configuration(slice(0, 3), f"nnUNetPlans_{CONFIGURATION}")}
    if with_2d:
        configurations["2d"] = configuration(slice(1, 3), "nnUNetPlans_2d")
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans", "continue_training": False,
            "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": patch,
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": configurations, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}}


def synthetic_dataset_json(input_channels: int = 1, num_classes: int = 2, cases: int = 1) -> dict:
    """A ``dataset.json`` for :func:`synthetic_plans`: ``input_channels`` inputs, ``num_classes`` labels incl.
    background."""
    return {"channel_names": {str(i): f"channel{i}" for i in range(int(input_channels))},
            "labels": {"background": 0, **{f"class{i}": i for i in range(1, int(num_classes))}},
            "numTraining": int(cases), "file_ending": ".nii.gz"}
