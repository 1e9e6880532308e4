"""nnU-Net plans for tests, cut down to what nnU-Net's trainer and our network builders read."""

from __future__ import annotations

from typing import Sequence

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


def make_plans(patch: Sequence[int], strides: Sequence[Sequence[int]], spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
               dataset_name: str = "Dataset998_Probe", batch_size: int = 2, batch_dice: bool = False,
               with_2d: bool = False) -> dict:
    """A plans dict with a ``3d_fullres`` configuration (data identifier ``nnUNetPlans_3d_fullres``)
    of this patch, pooling strides and spacing, and with ``with_2d`` a ``2d`` one of the in-plane
    axes; ``continue_training`` is set as ``nnUNetv2_train`` sets it."""
    n = len(strides)

    def configuration(dims: slice, identifier: str) -> dict:
        return {"data_identifier": identifier, "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
                "patch_size": list(patch)[dims], "median_image_size_in_voxels": list(patch)[dims],
                "spacing": list(spacing)[dims], "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False], "batch_dice": batch_dice,
                "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                 "_kw_requires_import": [],
                                 "arch_kwargs": {"n_stages": n, "strides": [list(s)[dims] for s in strides],
                                                 "features_per_stage": [min(32 * 2 ** i, 320) for i in range(n)]}}}

    configurations = {"3d_fullres": configuration(slice(0, 3), "nnUNetPlans_3d_fullres")}
    if with_2d:
        configurations["2d"] = configuration(slice(1, 3), "nnUNetPlans_2d")
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans", "continue_training": False,
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(patch),
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": configurations, "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}}


def plans_manager(*args, **kwargs) -> PlansManager:
    """:func:`make_plans` wrapped in nnU-Net's ``PlansManager``."""
    return PlansManager(make_plans(*args, **kwargs))


#: an anisotropic plan (5 x 0.8 x 0.8 mm, in-plane-only first poolings): total stride (4, 32, 32)
ANISO_PATCH, ANISO_SPACING = (20, 192, 192), (5.0, 0.8, 0.8)
ANISO_STRIDES = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
