"""Memory-aware nnU-Net plans for one trainer: nnU-Net's planner with our memory estimate.

:class:`ExtExperimentPlanner` subclasses nnU-Net's ``ExperimentPlanner`` and keeps its rules:
the initial patch follows the spacing and is clipped to the median shape, the topology (pooling
per axis, hence the total stride) comes from ``get_pool_and_conv_props``, the patch shrinks one
axis at a time (the one largest relative to the median shape) while batch 2 does not fit, and the
batch is at least 2 and covers at most 5 % of the dataset's voxels. What changes is the memory
check: ``static_estimate_VRAM_usage`` returns the estimated peak training memory of the trainer's
real network at batch 2 (:func:`~.estimate.estimate_training_memory`, in bytes), compared with
the budget (target minus ``headroom``, see :func:`budget_bytes`); and the batch is the largest
whose estimate fits the budget, instead of nnU-Net's linear rule.

The spacing, normalization, resampling and data identifier stay those of the source plans, so the
data preprocessed for them (``nnUNet_preprocessed/DatasetXXX/<data_identifier>``) is reused:
patch and batch size are training-time choices. Only the 3D configurations with their own patch
(``3d_fullres``, ``3d_lowres``) are re-planned; the rest of the plans is copied.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnunet_ext.architectures.plans import PlanError
from nnunet_ext.planning.estimate import MemoryEstimate, estimate_training_memory

#: fraction of the GPU memory target kept free for the CUDA context, cuDNN workspaces and the
#: caching allocator's fragmentation (the estimate counts tensors only)
DEFAULT_HEADROOM = 0.1
#: configurations that are re-planned (those with their own patch size)
PLANNED_CONFIGURATIONS = ("3d_fullres", "3d_lowres")
_GB = 2 ** 30


class TargetTooSmallError(ValueError):
    """The memory target does not fit the smallest valid patch at batch 2; names the target that does."""


def budget_bytes(gpu_memory_gb: float, headroom: float = DEFAULT_HEADROOM) -> float:
    """Bytes the estimate may use on a GPU of ``gpu_memory_gb`` GiB."""
    return gpu_memory_gb * (1 - headroom) * _GB


def target_for(estimate_bytes: float, headroom: float = DEFAULT_HEADROOM) -> float:
    """The GPU memory target in GiB whose budget is ``estimate_bytes``."""
    return estimate_bytes / (1 - headroom) / _GB


def plans_identifier(trainer: str, gpu_memory_gb: float, source: str = "nnUNetPlans") -> str:
    """``nnUNetPlans_SegMambaTrainer_24G`` (``_7.5G`` for a fractional target)."""
    return f"{source}_{trainer}_{gpu_memory_gb:g}G"


@dataclass
class PlannedConfiguration:
    """What :class:`ExtExperimentPlanner` chose for one configuration."""

    name: str
    patch_size: tuple[int, ...]
    batch_size: int
    estimate: MemoryEstimate
    budget: float
    batch_limited_by_dataset: bool


def _planner_base():
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    return ExperimentPlanner


class ExtExperimentPlanner(_planner_base()):
    """nnU-Net's ``ExperimentPlanner`` whose memory estimate is that of ``trainer_cls``'s network.

    ``source_plans`` (a plans dict, nnU-Net's ``nnUNetPlans.json``) gives the spacing, median shape
    and everything that is not re-planned. Use :meth:`plan` (not ``plan_experiment``: only the 3D
    configurations are re-planned, and nothing is written).
    """

    def __init__(self, dataset_name_or_id, trainer_cls: type, gpu_memory_target_in_gb: float, source_plans: dict,
                 headroom: float = DEFAULT_HEADROOM, plans_name: str | None = None):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb,
                         plans_name=plans_name or plans_identifier(trainer_cls.__name__, gpu_memory_target_in_gb,
                                                                   source_plans.get("plans_name", "nnUNetPlans")))
        self.trainer_cls = trainer_cls
        self.source_plans = source_plans
        self.headroom = float(headroom)
        # nnU-Net's loop shrinks while  estimate / ref_bs * 2 > reference_val * target / reference_GB:
        # with the estimate in bytes at batch ref_bs = 2, the reference is the budget in bytes
        self.UNet_reference_val_3d = budget_bytes(1.0, self.headroom)
        self.UNet_reference_val_corresp_GB = 1
        self.UNet_reference_val_corresp_bs_3d = 2
        self._configuration: dict | None = None      # the source configuration being re-planned
        self._estimates: dict[tuple, MemoryEstimate] = {}
        self._smallest: tuple[tuple[int, ...], MemoryEstimate] | None = None

    # ------------------------------------------------------------------ the estimate nnU-Net's loop calls
    def _plans_manager(self, patch_size: Sequence[int], arch_kwargs: dict, batch_size: int):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        configuration = copy.deepcopy(self._configuration)
        configuration["patch_size"] = [int(p) for p in patch_size]
        configuration["batch_size"] = int(batch_size)
        configuration["architecture"] = {**configuration["architecture"], "arch_kwargs": copy.deepcopy(arch_kwargs)}
        plans = copy.deepcopy(self.source_plans)
        plans["configurations"] = {"candidate": configuration}
        pm = PlansManager(plans)
        return pm, pm.get_configuration("candidate")

    def estimate(self, patch_size: Sequence[int], arch_kwargs: dict, batch_size: int) -> MemoryEstimate:
        """Estimated peak training memory at this candidate (cached)."""
        key = (tuple(int(p) for p in patch_size), str(arch_kwargs.get("strides")), int(batch_size))
        if key not in self._estimates:
            pm, cm = self._plans_manager(patch_size, arch_kwargs, batch_size)
            self._estimates[key] = estimate_training_memory(self.trainer_cls, pm, cm, self.dataset_json,
                                                            batch_size=batch_size, precision="amp")
        return self._estimates[key]

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name,
                                   arch_kwargs, arch_kwargs_req_import):
        """Bytes at batch 2 (nnU-Net's ``UNet_reference_val_corresp_bs_3d``) for this candidate.

        Raises :class:`TargetTooSmallError` when nnU-Net's loop would shrink below the smallest
        patch its topology allows (an axis under twice ``UNet_featuremap_min_edge_length``, or
        fewer than two poolings).
        """
        patch = tuple(int(p) for p in patch_size)
        pools = sum(1 for s in arch_kwargs.get("strides") or () if max(s) > 1)
        # with one pooling nnU-Net's U-Net has one deep-supervision output, whose weight nnU-Net sets to 0
        # (its weights then divide by 0): two poolings are the least a trainable plan has
        if min(patch) < 2 * self.UNet_featuremap_min_edge_length or pools < 2:
            self._too_small()
        try:
            estimate = self.estimate(patch, arch_kwargs, 2)
        except PlanError:
            return math.inf  # a patch this network cannot divide: keep shrinking
        self._smallest = (patch, estimate)
        return estimate.total

    def _too_small(self):
        if self._smallest is None:
            raise TargetTooSmallError(f"nnU-Net's planner found no patch with a pooling for "
                                      f"{self.trainer_cls.__name__} in this dataset's shape; it cannot be planned")
        patch, estimate = self._smallest
        raise TargetTooSmallError(
            f"{self.UNet_vram_target_GB:g} GB is too small for {self.trainer_cls.__name__}: its smallest valid patch "
            f"{list(patch)} at batch 2 needs an estimated {estimate.total / _GB:.2f} GiB of tensors, i.e. a GPU "
            f"memory target of at least {math.ceil(target_for(estimate.total, self.headroom) * 10) / 10:g} GB "
            f"(with {self.headroom:.0%} headroom). Pass --gpu-memory "
            f"{math.ceil(target_for(estimate.total, self.headroom) * 10) / 10:g} or more.")

    # ------------------------------------------------------------------ one configuration
    def plan_configuration(self, name: str) -> tuple[dict, PlannedConfiguration]:
        """Re-plan configuration ``name`` of the source plans: returns its new dict and the choice."""
        source = self.source_plans["configurations"][name]
        self._configuration = copy.deepcopy(source)
        self._smallest = None
        spacing = np.array(source["spacing"], dtype=float)
        median_shape = np.array(source["median_image_size_in_voxels"], dtype=float)
        n_voxels = float(np.prod(median_shape, dtype=np.float64) * self.dataset_json["numTraining"])
        planned = self.get_plans_for_configuration(spacing, median_shape, source["data_identifier"], n_voxels, {})
        patch = tuple(int(p) for p in planned["patch_size"])
        arch_kwargs = planned["architecture"]["arch_kwargs"]

        budget = budget_bytes(self.UNet_vram_target_GB, self.headroom)
        one, two = self.estimate(patch, arch_kwargs, 1), self.estimate(patch, arch_kwargs, 2)
        per_sample = max(two.total - one.total, 1)
        fits = 2 + int((budget - two.total) // per_sample) if two.total <= budget else 2
        cap = round(n_voxels * self.max_dataset_covered / np.prod(patch, dtype=np.float64))
        batch = max(min(fits, cap), self.UNet_min_batch_size)
        estimate = self.estimate(patch, arch_kwargs, batch)
        while estimate.total > budget and batch > self.UNet_min_batch_size:  # not quite linear in the batch
            batch -= 1
            estimate = self.estimate(patch, arch_kwargs, batch)
        if estimate.total > budget:  # nnU-Net's loop stopped at its initial patch with batch 2 too large
            self._smallest = (patch, estimate)
            self._too_small()

        configuration = copy.deepcopy(source)
        configuration["patch_size"] = list(patch)
        configuration["batch_size"] = int(batch)
        configuration["architecture"] = planned["architecture"]
        return configuration, PlannedConfiguration(name, patch, int(batch), estimate, budget, batch == cap and cap < fits)

    def plan(self) -> tuple[dict, list[PlannedConfiguration]]:
        """The new plans (a dict to save as ``<plans_identifier>.json``) and what was chosen."""
        from nnunetv2.utilities.json_export import recursive_fix_for_json_export

        plans = copy.deepcopy(self.source_plans)
        plans["plans_name"] = self.plans_identifier
        plans["experiment_planner_used"] = type(self).__name__
        chosen = []
        for name in PLANNED_CONFIGURATIONS:
            source = self.source_plans["configurations"].get(name)
            if source is None or "patch_size" not in source or len(source["patch_size"]) != 3:
                continue
            plans["configurations"][name], choice = self.plan_configuration(name)
            chosen.append(choice)
        recursive_fix_for_json_export(plans)
        return plans, chosen
