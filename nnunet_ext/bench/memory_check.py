"""Estimated vs measured peak training memory (``nnunet-ext benchmark --memory-check``).

For each network, on the plan nnU-Net's planner makes for the patch
(:func:`~nnunet_ext.architectures.plans.synthetic_plans`):

- ``estimate_mib``: :func:`nnunet_ext.planning.estimate.estimate_training_memory` in float32 with
  the fused CPU scan's memory profile (what a CPU run does), computed on fake tensors;
- ``measured_mib``: the peak memory of real training steps of the same trainer (its own
  ``train_step``, :mod:`nnunet_ext.trainers.step`) in a fresh interpreter
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
from nnunet_ext.bench.networks import network_title

_MIB = 2 ** 20
#: the plan of the warm-up steps before the baseline
_WARMUP_PATCH = (16, 16, 16)
#: glibc malloc: serve every allocation from 64 KiB up by mmap and return it on free, so the resident
#: set follows the live tensors (otherwise freed heap memory stays resident and counts as peak)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _setting(patch_size: Sequence[int], input_channels: int, num_classes: int, batch: int,
             spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[dict, dict]:
    """(plans, dataset.json) of the synthetic ``3d_fullres`` plan of this patch and batch."""
    from nnunet_ext.architectures.plans import synthetic_dataset_json, synthetic_plans

    return (synthetic_plans(patch_size, spacing, batch_size=batch, input_channels=input_channels),
            synthetic_dataset_json(input_channels, num_classes))


def measure_train_peak(trainer: str, patch_size: Sequence[int], input_channels: int = 1, num_classes: int = 2,
                       batch: int = 1, steps: int = 2, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """Peak memory of real float32 training steps on the CPU, in this process (run it in a fresh one)."""
    import gc

    import torch

    from nnunet_ext.trainers.step import trainer_class

    cls = trainer_class(trainer)
    # one-off costs before the baseline (lazy imports, conv libraries, the scan kernels' compilation):
    # two steps of the same trainer on a small plan
    _steps(cls, *_setting(_WARMUP_PATCH, input_channels, num_classes, 1), batch=1, steps=2)
    gc.collect()
    plans, dataset_json = _setting(patch_size, input_channels, num_classes, batch, spacing)
    memory = PeakMemory("cpu")
    peak = _steps(cls, plans, dataset_json, batch, steps, memory)
    return {"trainer": trainer, "patch_size": list(patch_size), "batch": batch, "measured_mib": peak / _MIB,
            "threads": torch.get_num_threads()}


def _steps(cls, plans: dict, dataset_json: dict, batch: int, steps: int, memory: PeakMemory | None = None) -> int:
    """Set up the trainer (:func:`~nnunet_ext.trainers.step.step_trainer`) and run ``max(2, steps)`` of its
    float32 train steps on the CPU; returns the peak above ``memory``'s baseline over the steps after
    the first (0 without ``memory``)."""
    import torch

    from nnunet_ext.trainers.step import step_trainer, synthetic_batch

    torch.manual_seed(0)
    trainer = step_trainer(cls, plans, dataset_json, "cpu")
    data = synthetic_batch(trainer, batch)
    peak = 0
    for step in range(max(2, steps)):
        if memory is not None and step >= 1:
            memory.reset()
        trainer.train_step(data)
        if memory is not None and step >= 1:
            peak = max(peak, memory.above_baseline())
    return peak


def estimate_train_peak(trainer: str, patch_size: Sequence[int], input_channels: int = 1, num_classes: int = 2,
                        batch: int = 1, threads: int = 1, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                        precision: str = "fp32") -> dict:
    """:func:`~nnunet_ext.planning.estimate.estimate_training_memory` of the same setting."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.architectures.plans import CONFIGURATION
    from nnunet_ext.planning.estimate import estimate_training_memory
    from nnunet_ext.trainers.step import trainer_class

    plans, dataset_json = _setting(patch_size, input_channels, num_classes, batch, spacing)
    pm = PlansManager(plans)
    e = estimate_training_memory(trainer_class(trainer), pm, pm.get_configuration(CONFIGURATION), dataset_json,
                                 batch, precision, threads=threads)
    return {"estimate_mib": e.total / _MIB, "estimate": e.as_dict()}


def memory_check(archs: Sequence[str], patches: Sequence[Sequence[int]], input_channels: int = 1, num_classes: int = 2,
                 batch: int = 1, threads: int = 1, timeout: float | None = None,
                 on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per network and patch: estimate, measurement (fresh process) and their ratio."""
    from nnunet_ext.trainers.step import trainer_of

    rows = []
    for arch in archs:
        trainer = trainer_of(arch).__name__
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
