"""Plan a dataset for trainers and GPU memory targets: checks, planning, writing, next steps.

:func:`plan_dataset` reads ``$nnUNet_preprocessed/DatasetXXX/{dataset_fingerprint.json,
<source>.json}`` (and the raw ``dataset.json``, as nnU-Net's planner does), re-plans the 3D
configurations with :class:`~.planner.ExtExperimentPlanner` for each trainer and target, and returns
the new plans without writing; :func:`write_plans` writes them all at once (atomically, next to the
source plans; the stock files are untouched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nnunet_ext.planning.planner import (DEFAULT_HEADROOM, ExtExperimentPlanner, PlannedConfiguration,
                                         TargetTooSmallError, plans_identifier)


class PlanningError(ValueError):
    """Bad arguments or missing inputs; the message is one line naming the fix."""


@dataclass
class TrainerPlans:
    """The plans written for one trainer and target."""

    trainer: str
    gpu_memory_gb: float
    identifier: str
    path: str
    plans: dict
    configurations: list[PlannedConfiguration]
    missing_data: list[str]          # configurations whose preprocessed folder does not exist


def _load_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def dataset_name(dataset: str | int) -> str:
    """nnU-Net's dataset name for an ID or name; :class:`PlanningError` if nnU-Net has none."""
    from nnunetv2 import paths

    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not getattr(paths, var):
            raise PlanningError(f"${var} is not set; export it as for nnUNetv2_plan_and_preprocess")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise PlanningError(f"no dataset '{dataset}' in $nnUNet_raw / $nnUNet_preprocessed "
                            f"({' '.join(str(e).split())[:160]}); check -d") from None


def plan_dataset(dataset: str | int, trainers: list[str], gpu_memory_gb: list[float],
                 source: str = "nnUNetPlans", headroom: float = DEFAULT_HEADROOM) -> list[TrainerPlans]:
    """New plans for every trainer x target (nothing written). Raises :class:`PlanningError`."""
    from nnunetv2 import paths

    from nnunet_ext.trainers.step import trainer_class

    bad = [g for g in gpu_memory_gb if not (g > 0 and g < float("inf"))]
    if bad or not gpu_memory_gb:
        raise PlanningError(f"--gpu-memory takes GPU memory targets in GB > 0 (e.g. 24), got "
                            f"{' '.join(f'{g:g}' for g in gpu_memory_gb) or 'nothing'}")
    if not 0 <= headroom < 1:
        raise PlanningError(f"--headroom is a fraction of the target from 0 to below 1 (e.g. 0.1), got {headroom:g}")
    classes = {}
    for name in trainers:
        try:
            classes[name] = trainer_class(name)
        except KeyError as e:
            raise PlanningError(f"{e.args[0]}; pass one of them to --trainer") from None
    name = dataset_name(dataset)
    folder = os.path.join(paths.nnUNet_preprocessed, name)
    fingerprint = os.path.join(folder, "dataset_fingerprint.json")
    source_file = os.path.join(folder, f"{source}.json")
    raw_json = os.path.join(paths.nnUNet_raw, name, "dataset.json")
    if not os.path.isfile(raw_json):
        raise PlanningError(f"{raw_json} is missing; nnU-Net's planner reads the raw dataset.json (restore "
                            f"$nnUNet_raw/{name})")
    if not os.path.isfile(fingerprint):
        raise PlanningError(f"{fingerprint} is missing; run nnUNetv2_extract_fingerprint -d {dataset} first")
    if not os.path.isfile(source_file):
        raise PlanningError(f"{source_file} is missing; run nnUNetv2_plan_experiment -d {dataset} first "
                            f"(or name existing plans with --source-plans)")
    source_plans = _load_json(source_file)
    if not any(c in source_plans.get("configurations", {}) for c in ("3d_fullres", "3d_lowres")):
        raise PlanningError(f"{source_file} has no 3D configuration; run nnUNetv2_plan_experiment -d {dataset} "
                            f"(3d_fullres) first")

    results = []
    for trainer, cls in classes.items():
        for gb in gpu_memory_gb:
            planner = ExtExperimentPlanner(name, cls, gb, source_plans, headroom,
                                           plans_name=plans_identifier(trainer, gb, source))
            try:
                plans, chosen = planner.plan()
            except TargetTooSmallError as e:
                raise PlanningError(str(e)) from None
            missing = [c.name for c in chosen if not os.path.isdir(
                os.path.join(folder, plans["configurations"][c.name]["data_identifier"]))]
            results.append(TrainerPlans(trainer, gb, planner.plans_identifier,
                                        os.path.join(folder, f"{planner.plans_identifier}.json"), plans, chosen,
                                        missing))
    return results


def write_plans(results: list[TrainerPlans]) -> None:
    """Write every result's plans file (all or none)."""
    from nnunet_ext.io import json_writer, write_all

    write_all([(r.path, json_writer(r.plans)) for r in results])


def next_steps(dataset: str | int, results: list[TrainerPlans]) -> list[str]:
    """The commands to run next: preprocessing where the data is missing, then training."""
    lines = []
    for r in results:
        for c in r.missing_data:
            lines.append(f"nnUNetv2_preprocess -d {dataset} -plans_name {r.identifier} -c {c}")
    for r in results:
        for c in r.configurations:
            lines.append(f"nnUNetv2_train {dataset} {c.name} 0 -tr {r.trainer} -p {r.identifier}")
    return lines


def result_rows(results: list[TrainerPlans]) -> list[dict]:
    """One JSON-able row per trainer, target and configuration."""
    return [{"trainer": r.trainer, "gpu_memory_gb": r.gpu_memory_gb, "plans": r.identifier, "file": r.path,
             "configuration": c.name, "patch_size": list(c.patch_size), "batch_size": c.batch_size,
             "estimate_gib": c.estimate.total / 2 ** 30, "budget_gib": c.budget / 2 ** 30,
             "batch_limited_by_dataset": c.batch_limited_by_dataset, "estimate": c.estimate.as_dict()}
            for r in results for c in r.configurations]


def format_rows(rows: list[dict]) -> str:
    """Markdown table of :func:`result_rows`: patch and batch per trainer, target and configuration."""
    lines = ["| trainer | GPU target | configuration | patch | batch | estimated peak (GiB) | budget (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        batch = f"{r['batch_size']}" + (" (5% cap)" if r["batch_limited_by_dataset"] else "")
        lines.append(f"| {r['trainer']} | {r['gpu_memory_gb']:g} GB | {r['configuration']} | "
                     f"{'×'.join(map(str, r['patch_size']))} | {batch} | {r['estimate_gib']:.2f} | "
                     f"{r['budget_gib']:.2f} |")
    return "\n".join(lines)
