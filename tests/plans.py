"""nnU-Net plans for tests: the package's plans factory with hand-picked strides."""

from __future__ import annotations

from typing import Sequence

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.architectures.plans import synthetic_plans


def make_plans(patch: Sequence[int], strides: Sequence[Sequence[int]], spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
               dataset_name: str = "Dataset998_Probe", batch_size: int = 2, batch_dice: bool = False,
               with_2d: bool = False) -> dict:
    """The package's :func:`~nnunet_ext.architectures.plans.synthetic_plans` with these pooling strides
    (a ``3d_fullres`` configuration, data identifier ``nnUNetPlans_3d_fullres``; with ``with_2d`` a
    ``2d`` one of the in-plane axes) and ``batch_dice``."""
    plans = synthetic_plans(patch, spacing, strides=strides, batch_size=batch_size, dataset_name=dataset_name,
                            with_2d=with_2d)
    for configuration in plans["configurations"].values():
        configuration["batch_dice"] = batch_dice
    return plans


def plans_manager(*args, **kwargs) -> PlansManager:
    """:func:`make_plans` wrapped in nnU-Net's ``PlansManager``."""
    return PlansManager(make_plans(*args, **kwargs))


#: an anisotropic plan (5 x 0.8 x 0.8 mm, in-plane-only first poolings): total stride (4, 32, 32)
ANISO_PATCH, ANISO_SPACING = (20, 192, 192), (5.0, 0.8, 0.8)
ANISO_STRIDES = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
