"""The README's worked example: plans for every network on a BraTS-like dataset at 8, 24 and 80 GB.

``python -m nnunet_ext.planning.example`` fabricates, in a temporary folder, what nnU-Net's
planning reads -- a raw ``dataset.json`` (4 channels, 4 labels, 400 training cases), a
``dataset_fingerprint.json`` (1 mm isotropic, every case 140x170x140 after cropping) and the stock
``nnUNetPlans.json`` made by nnU-Net's own ``ExperimentPlanner`` -- then runs
:func:`~nnunet_ext.planning.dataset.plan_dataset` and prints the table of patch, batch and estimated
memory. ``--root DIR --fabricate-only`` just writes the dataset (no images: planning needs none).

nnU-Net reads its folders from the environment when it is imported, so this module sets
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` before importing it (run it as a script).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_BraTSLike"


def default_trainers() -> list[str]:
    """The trainers of the registry's paper networks, then nnU-Net's own."""
    from nnunet_ext.architectures import available_architectures, get_architecture

    return [*(get_architecture(a).trainer for a in available_architectures(paper_network=True)), "nnUNetTrainer"]


def environment(root: str) -> dict:
    """nnU-Net's three folders under ``root``."""
    return {"nnUNet_raw": os.path.join(root, "raw"), "nnUNet_preprocessed": os.path.join(root, "preprocessed"),
            "nnUNet_results": os.path.join(root, "results")}


def fabricate(root: str, dataset_id: int = DATASET_ID, name: str = DATASET_NAME,
              input_channels: int = 4, num_classes: int = 4, spacing=(1.0, 1.0, 1.0),
              median_shape=(140, 170, 140), cases: int = 400) -> None:
    """Write the raw ``dataset.json``, the fingerprint and nnU-Net's stock plans of a dataset whose
    ``cases`` images all have ``median_shape`` voxels of ``spacing`` mm. nnU-Net must not be imported
    yet, or be imported with :func:`environment` (``root``) set."""
    env = environment(root)
    os.environ.update(env)
    raw = os.path.join(env["nnUNet_raw"], name)
    pre = os.path.join(env["nnUNet_preprocessed"], name)
    for d in (os.path.join(raw, "imagesTr"), os.path.join(raw, "labelsTr"), pre):
        os.makedirs(d, exist_ok=True)
    dataset_json = {"channel_names": {str(i): f"MR{i}" for i in range(input_channels)},
                    "labels": {"background": 0, **{f"label{i}": i for i in range(1, num_classes)}},
                    "numTraining": cases, "file_ending": ".nii.gz"}
    fingerprint = {"spacings": [list(spacing)] * cases, "shapes_after_crop": [list(median_shape)] * cases,
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {
                       str(i): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                                "percentile_99_5": 1.0, "std": 1.0} for i in range(input_channels)}}
    for path, obj in ((os.path.join(raw, "dataset.json"), dataset_json),
                      (os.path.join(pre, "dataset.json"), dataset_json),
                      (os.path.join(pre, "dataset_fingerprint.json"), fingerprint)):
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)

    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from nnunet_ext.architectures.plans import synthetic_plans

    planner = ExperimentPlanner(dataset_id)
    median = np.array(median_shape, dtype=float)
    fullres = planner.get_plans_for_configuration(np.array(spacing, dtype=float), median,
                                                  planner.generate_data_identifier("3d_fullres"),
                                                  float(np.prod(median) * cases), {})
    fullres["batch_dice"] = False
    plans = synthetic_plans(median_shape, spacing, input_channels=input_channels, dataset_name=name)
    plans.pop("continue_training")
    plans.update(configurations={"3d_fullres": fullres},  # nnU-Net's own plan of the fingerprint
                 foreground_intensity_properties_per_channel=fingerprint["foreground_intensity_properties_per_channel"])
    recursive_fix_for_json_export(plans)
    with open(os.path.join(pre, "nnUNetPlans.json"), "w") as f:
        json.dump(plans, f, indent=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nnunet_ext.planning.example", description=__doc__.split("\n")[0])
    p.add_argument("--root", help="folder for the fabricated dataset (default: a temporary folder)")
    p.add_argument("--trainers", nargs="+", help="trainers to plan for (default: every paper network's, then "
                                                 "nnUNetTrainer)")
    p.add_argument("--gpu-memory", type=float, nargs="+", default=[8.0, 24.0, 80.0])
    p.add_argument("--fabricate-only", action="store_true")
    args = p.parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="nnunet_ext_plan_example_")
    if "nnunetv2" in sys.modules:
        raise SystemExit("run this as a script: nnU-Net must read the example's folders when it is imported")
    fabricate(root)
    if args.fabricate_only:
        print(root)
        return 0
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from nnunet_ext.planning.dataset import PlanningError, format_rows, plan_dataset, result_rows

    rows = []
    for trainer in args.trainers or default_trainers():
        for gb in args.gpu_memory:
            try:
                new = result_rows(plan_dataset(DATASET_ID, [trainer], [gb]))
            except PlanningError as e:
                print(f"{trainer} {gb:g} GB: {e}", file=sys.stderr, flush=True)
                continue
            rows += new
            print(format_rows(new).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
