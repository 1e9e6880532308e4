"""Estimated vs measured peak training memory (``nnunet-ext benchmark --memory-check``).

For each network, on the plan nnU-Net's planner makes for the patch (:meth:`PlanSpec.from_patch`,
nnU-Net's default architecture entry :func:`~nnunet_ext.bench.networks.nnunet_arch_kwargs`):

- ``estimate_mib``: :func:`nnunet_ext.planning.estimate.estimate_training_memory` in float32 with
  the fused CPU scan's memory profile (what a CPU run does), computed on fake tensors;
- ``measured_mib``: the peak memory of real training steps of the same trainer's network, loss and
  optimizer (:func:`nnunet_ext.planning.estimate.train_step`) in a fresh interpreter
  (:func:`~nnunet_ext.bench.harness.run_isolated`), above the worker's usage before the network is
  built (:class:`~nnunet_ext.bench.memory.PeakMemory`: CPU peak resident set), over the steps after
  the first (which allocates the momentum), after two warm-up steps on a small plan (imports,
  library set-up, the scan kernels' compilation), with glibc's malloc returning every freed block
  of 64 KiB or more to the system (:data:`MALLOC_ENV`), so the resident set follows the tensors;
- ``ratio`` = estimate / measured.
"""

from __future__ import annotations

from typing import Callable, Sequence

from nnunet_ext.bench.harness import run_isolated
from nnunet_ext.bench.memory import PeakMemory
from nnunet_ext.bench.networks import NNUNET, network_title

_MIB = 2 ** 20
#: the plan of the warm-up steps before the baseline
_WARMUP_PATCH = (16, 16, 16)
#: glibc malloc: serve every allocation from 64 KiB up by mmap and return it on free, so the resident
#: set follows the live tensors (otherwise freed heap memory stays resident and counts as peak)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
#: the trainer of nnU-Net's own network
NNUNET_TRAINER = "nnUNetTrainer"


def trainer_of(arch: str) -> str:
    """The trainer that trains registered architecture ``arch`` (``nnunet``: nnU-Net's own)."""
    from nnunet_ext.architectures import get_architecture

    return NNUNET_TRAINER if arch in (NNUNET, NNUNET_TRAINER) \
        else get_architecture(arch).trainer


def plans_for_patch(patch_size: Sequence[int], input_channels: int, num_classes: int, batch: int,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0)):
    """``(plans_manager, configuration_manager, dataset_json)`` of a ``3d_fullres`` plan with this
    patch and batch and nnU-Net's default architecture entry for it."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.bench.networks import nnunet_arch_kwargs

    architecture = nnunet_arch_kwargs(patch_size, spacing)
    configuration = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": int(batch), "patch_size": list(patch_size),
                     "median_image_size_in_voxels": list(patch_size), "spacing": list(spacing),
                     "normalization_schemes": ["ZScoreNormalization"] * input_channels,
                     "use_mask_for_norm": [False] * input_channels, "batch_dice": False, "architecture": architecture}
    plans = {"dataset_name": "Dataset999_MemoryCheck", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": list(spacing), "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
             "configurations": {"3d_fullres": configuration}, "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    dataset_json = {"channel_names": {str(i): f"c{i}" for i in range(input_channels)},
                    "labels": {"background": 0, **{f"l{i}": i for i in range(1, num_classes)}},
                    "numTraining": 10, "file_ending": ".nii.gz"}
    pm = PlansManager(plans)
    return pm, pm.get_configuration("3d_fullres"), dataset_json


def measure_train_peak(trainer: str, patch_size: Sequence[int], input_channels: int = 1, num_classes: int = 2,
                       batch: int = 1, steps: int = 2, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """Peak memory of real float32 training steps on the CPU, in this process (run it in a fresh one)."""
    import gc

    import torch

    from nnunet_ext.planning.estimate import resolve_trainer

    cls = resolve_trainer(trainer)
    # one-off costs before the baseline (lazy imports, conv libraries, the scan kernels' compilation):
    # two steps of the same trainer on a small plan
    warm = plans_for_patch(_WARMUP_PATCH, input_channels, num_classes, 1)
    _steps(cls, *warm, batch=1, steps=2, num_classes=num_classes)
    gc.collect()
    pm, cm, dataset_json = plans_for_patch(patch_size, input_channels, num_classes, batch, spacing)
    memory = PeakMemory("cpu")
    peak = _steps(cls, pm, cm, dataset_json, batch, steps, num_classes, memory)
    return {"trainer": trainer, "patch_size": list(patch_size), "batch": batch, "measured_mib": peak / _MIB,
            "threads": torch.get_num_threads()}


def _steps(cls, pm, cm, dataset_json, batch: int, steps: int, num_classes: int, memory: PeakMemory | None = None) -> int:
    """Build the trainer's network, loss and optimizer and run ``max(2, steps)`` float32 train steps;
    returns the peak above ``memory``'s baseline over the steps after the first (0 without ``memory``)."""
    import torch

    from nnunet_ext.planning.estimate import build_loss, build_network, input_channels, make_optimizer, train_step

    torch.manual_seed(0)
    network = build_network(cls, pm, cm, dataset_json)
    network.train()
    loss = build_loss(cls, network, pm, cm, dataset_json)
    optimizer = make_optimizer(network, "fp32")
    data = torch.randn(batch, input_channels(pm, cm, dataset_json), *cm.patch_size)
    targets, peak = None, 0
    for step in range(max(2, steps)):
        if memory is not None and step >= 1:
            memory.reset()
        targets = train_step(network, loss, optimizer, data, targets, "fp32")
        if step == 0:
            targets = [t.random_(0, num_classes) for t in targets]
        if memory is not None and step >= 1:
            peak = max(peak, memory.above_baseline())
    return peak


def estimate_train_peak(trainer: str, patch_size: Sequence[int], input_channels: int = 1, num_classes: int = 2,
                        batch: int = 1, threads: int = 1, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                        precision: str = "fp32") -> dict:
    """:func:`~nnunet_ext.planning.estimate.estimate_training_memory` of the same setting."""
    from nnunet_ext.planning.estimate import estimate_training_memory, resolve_trainer

    pm, cm, dataset_json = plans_for_patch(patch_size, input_channels, num_classes, batch, spacing)
    e = estimate_training_memory(resolve_trainer(trainer), pm, cm, dataset_json, batch, precision, threads=threads)
    return {"estimate_mib": e.total / _MIB, "estimate": e.as_dict()}


def memory_check(archs: Sequence[str], patches: Sequence[Sequence[int]], input_channels: int = 1, num_classes: int = 2,
                 batch: int = 1, threads: int = 1, timeout: float | None = None,
                 on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per network and patch: estimate, measurement (fresh process) and their ratio."""
    rows = []
    for arch in archs:
        trainer = trainer_of(arch)
        for patch in patches:
            row = {"arch": arch, "trainer": trainer, "patch_size": list(patch), "batch": batch}
            try:
                row.update(estimate_train_peak(trainer, patch, input_channels, num_classes, batch, threads))
            except Exception as e:  # reported in the table, the next network goes on
                row["error"] = f"estimate: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            if "error" not in row:
                measured = run_isolated_env(measure_train_peak, {"trainer": trainer, "patch_size": list(patch),
                                                             "input_channels": input_channels, "batch": batch,
                                                             "num_classes": num_classes}, threads, timeout)
                if "error" in measured:
                    row["error"] = f"measurement: {measured['error']}"
                else:
                    row["measured_mib"] = measured["measured_mib"]
                    row["ratio"] = row["estimate_mib"] / max(measured["measured_mib"], 1e-9)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def run_isolated_env(fn, kwargs: dict, threads: int, timeout: float | None) -> dict:
    """:func:`~nnunet_ext.bench.harness.run_isolated` with :data:`MALLOC_ENV` in the worker's environment."""
    import os

    saved = {k: os.environ.get(k) for k in MALLOC_ENV}
    os.environ.update(MALLOC_ENV)
    try:
        return run_isolated(fn, kwargs, threads, timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def format_memory_table(rows: Sequence[dict]) -> str:
    """Markdown table: network, patch, estimate, measurement, estimate / measured."""
    lines = ["| network | patch | batch | estimated peak MiB | measured peak MiB | estimate / measured |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        patch = "×".join(map(str, r["patch_size"]))
        if "error" in r:
            lines.append(f"| {network_title(r['arch'])} | {patch} | {r['batch']} | — | — | error: {r['error']} |")
        else:
            lines.append(f"| {network_title(r['arch'])} | {patch} | {r['batch']} | {r['estimate_mib']:.0f} | "
                         f"{r['measured_mib']:.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def run_memory_check(args) -> int:
    """``nnunet-ext benchmark --memory-check Z Y X [...]``: print :func:`format_memory_table` (or JSON)."""
    import json
    import sys

    import torch

    from nnunet_ext.bench.networks import default_architectures

    for patch in args.memory_check:
        if any(p < 1 for p in patch):
            raise SystemExit(f"nnunet-ext benchmark: --memory-check takes voxel counts >= 1 (z y x), got "
                             f"{' '.join(map(str, patch))}")
    archs = [NNUNET, *(a for a in (args.archs or default_architectures()) if a != NNUNET)]
    threads = args.threads or torch.get_num_threads()
    rows = memory_check(archs, [tuple(p) for p in args.memory_check], args.input_channels, args.num_classes, args.batch,
                        threads, args.timeout,
                        on_row=lambda r: print(format_memory_table([r]).splitlines()[-1], file=sys.stderr,
                                               flush=True))
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        print(f"float32 training on the CPU, {threads} thread(s); estimate: nnunet_ext.planning (fake tensors), "
              f"measured: peak resident memory of real steps in a fresh process\n")
        print(format_memory_table(rows))
    return 0
