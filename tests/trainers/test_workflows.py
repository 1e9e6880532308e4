"""nnU-Net's workflows beyond train -> predict, with our trainers, through the stock console scripts:
fine-tuning to another label set, sharing a model as a zip, low resolution + cascade, comparing and
ensembling trainers, validation with the best checkpoint, and resuming MISSU.

Every model here is a 1 epoch x 2 iterations run on the tiny synthetic dataset; the fold-0 models
that ``test_cli_end_to_end`` trained in the same session are reused where they exist.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from nnunet_ext.architectures import available_architectures, get_architecture
from tests.nnunet_cli import DATASET_ID, assert_same_geometry, copy_as_interrupted, run

pytestmark = pytest.mark.e2e

PAPER_TRAINERS = [get_architecture(a).trainer for a in available_architectures(paper_network=True)]
FINETUNE_ID = 902


def short(trainer: str, epochs: int = 1) -> str:
    return f"{trainer}_{epochs}epoch{'s' if epochs > 1 else ''}_2iters"


def trained_fold0(ds, trainer: str):
    """The fold-0 folder of ``trainer``'s 1 x 2 run on the tiny dataset (trained here if missing)."""
    fold = ds.output_folder(short(trainer)) / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        ds.train(short(trainer))
    return fold


def segmentations(folder) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


# --------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def finetune_dataset(tiny_dataset):
    """Dataset902: the same kind of images with a fourth class, preprocessed with Dataset901's plans
    (nnU-Net's pretraining recipe: one plans file for both datasets, moved with
    ``nnUNetv2_move_plans_between_datasets``, so patch and network match)."""
    from tests.nnunet_cli import TinyDataset
    from tests.synthetic import build_synthetic_dataset

    root = tiny_dataset.root
    name = f"Dataset{FINETUNE_ID}_TinyFour"
    if not (root / "preprocessed" / name / "nnUNetPlans_3d_fullres").is_dir():
        build_synthetic_dataset(root / "raw", FINETUNE_ID, "TinyFour", seed=1, extra_class=True)
        env = {**tiny_dataset.env, "nnUNet_n_proc_DA": "1"}  # the planner's torch.set_num_threads needs >= 1
        run(["nnUNetv2_extract_fingerprint", "-d", str(FINETUNE_ID), "-np", "1"], env)
        run(["nnUNetv2_plan_experiment", "-d", str(FINETUNE_ID)], env)  # its own plans, replaced next
        run(["nnUNetv2_move_plans_between_datasets", "-s", str(DATASET_ID), "-t", str(FINETUNE_ID),
             "-sp", "nnUNetPlans", "-tp", "nnUNetPlans"], env)
        run(["nnUNetv2_preprocess", "-d", str(FINETUNE_ID), "-plans_name", "nnUNetPlans", "-c", "3d_fullres",
             "-np", "1"], env)
    return TinyDataset(root)


#: run in a child with the test's nnU-Net paths: nnU-Net's own loading path of ``-pretrained_weights``
#: (trainer from the plans, ``maybe_load_checkpoint``), then every weight compared with the checkpoint
LOAD_CHECK = r"""
import json, sys, torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
dataset, trainer_name, ckpt = sys.argv[1:4]
trainer = get_trainer_from_args(dataset, "3d_fullres", 0, trainer_name, "nnUNetPlans", device=torch.device("cpu"))
maybe_load_checkpoint(trainer, False, False, ckpt)
pretrained = torch.load(ckpt, map_location="cpu", weights_only=False)["network_weights"]
net = trainer.network._orig_mod if hasattr(trainer.network, "_orig_mod") else trainer.network
report = {"equal": [], "differ": [], "heads": {}}
for k, v in net.state_dict().items():
    if ".seg_layers." in k:
        report["heads"][k] = [list(v.shape), list(pretrained[k].shape) if k in pretrained else None]
    else:
        report["equal" if torch.equal(v.cpu(), pretrained[k]) else "differ"].append(k)
print("REPORT" + json.dumps(report))
"""


@pytest.mark.parametrize("trainer", PAPER_TRAINERS)
def test_pretrained_weights_transfer_to_more_classes(tiny_dataset, finetune_dataset, trainer):
    ckpt = trained_fold0(tiny_dataset, trainer) / "checkpoint_final.pth"
    out = run([sys.executable, "-c", LOAD_CHECK, str(FINETUNE_ID), short(trainer), str(ckpt)], tiny_dataset.env).stdout
    report = json.loads(out.split("REPORT", 1)[1])
    assert report["differ"] == [] and len(report["equal"]) > 10
    # the output heads are the only weights not transferred: 3 classes before, 4 now
    weights = {k: v for k, v in report["heads"].items() if k.endswith(".weight") and len(v[0]) == 5}
    assert weights and all(new[0] == 4 and old[0] == 3 for new, old in weights.values()), report["heads"]


def test_finetune_with_stock_train_command(tiny_dataset, finetune_dataset):
    trainer = "MISSUTrainer"
    ckpt = trained_fold0(tiny_dataset, trainer) / "checkpoint_final.pth"
    run(["nnUNetv2_train", str(FINETUNE_ID), "3d_fullres", "0", "-tr", short(trainer), "-device", "cpu",
         "-pretrained_weights", str(ckpt)], tiny_dataset.env)
    fold = tiny_dataset.root / "results" / f"Dataset{FINETUNE_ID}_TinyFour" / \
        f"{short(trainer)}__nnUNetPlans__3d_fullres" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}


# --------------------------------------------------------------------------- sharing a model
@pytest.mark.parametrize("trainer", PAPER_TRAINERS)
def test_export_install_predict_gives_the_same_segmentation(tiny_dataset, trainer, tmp_path):
    trained_fold0(tiny_dataset, trainer)
    tiny_dataset.predict(short(trainer), tmp_path / "before")
    zip_file = tmp_path / "model.zip"
    run(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", str(zip_file), "-c", "3d_fullres",
         "-tr", short(trainer), "-f", "0"], tiny_dataset.env)
    # a colleague's machine: an empty nnUNet_results
    env = {"nnUNet_results": str(tmp_path / "other_results")}
    run(["nnUNetv2_install_pretrained_model_from_zip", str(zip_file)], {**tiny_dataset.env, **env})
    tiny_dataset.predict(short(trainer), tmp_path / "after", env=env)
    before, after = segmentations(tmp_path / "before"), segmentations(tmp_path / "after")
    assert before.keys() == after.keys() and len(before) == 2
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


# --------------------------------------------------------------------------- low resolution + cascade
CASCADE_PLANS = "nnUNetPlansCascade"


@pytest.fixture(scope="module")
def cascade_plans(tiny_dataset):
    """Dataset901's plans plus ``3d_lowres`` (half resolution) and ``3d_cascade_fullres``, written as
    nnU-Net's planner writes them when the data is large; the lowres data preprocessed by the stock
    command (3d_cascade_fullres reuses 3d_fullres' preprocessed data)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    plans = tiny_dataset.plans()
    full = plans["configurations"]["3d_fullres"]
    spacing = [2 * s for s in full["spacing"]]
    shape = [int(round(m / 2)) for m in full["median_image_size_in_voxels"]]
    _, pool, kernels, patch, _ = get_pool_and_conv_props(spacing, shape, 4, 999999)
    pool, kernels = [[int(v) for v in p] for p in pool], [[int(v) for v in k] for k in kernels]
    patch = [int(v) for v in patch]
    arch = json.loads(json.dumps(full["architecture"]))
    n = len(pool)
    arch["arch_kwargs"].update(n_stages=n, strides=pool, kernel_sizes=kernels,
                               features_per_stage=[min(32 * 2 ** i, 320) for i in range(n)],
                               n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
    plans["configurations"]["3d_lowres"] = {
        **full, "data_identifier": f"{CASCADE_PLANS}_3d_lowres", "spacing": spacing, "patch_size": patch,
        "median_image_size_in_voxels": shape, "architecture": arch, "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    tiny_dataset.write_plans(CASCADE_PLANS, plans)
    run(["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name", CASCADE_PLANS, "-c", "3d_lowres", "-np", "1"],
        tiny_dataset.env)
    return plans


#: The cascade's mechanics (previous-stage predictions, one-hot channels appended to the input) are
#: nnU-Net's and our shared base trainer's, the same for every trainer; the network-specific part, first
#: layers that read 1 + 2 channels, is checked for every network in ``test_every_network_reads_the_cascade_input``.
#: End to end: one CNN-transformer and one Mamba network (the two quickest on a CPU).
QUICKEST_PAIR = ["MISSUTrainer", "SegResMambaTrainer"]


@pytest.mark.parametrize("trainer", QUICKEST_PAIR)
def test_lowres_then_cascade_train_and_predict(tiny_dataset, cascade_plans, trainer, tmp_path):
    name = short(trainer)
    # fold 'all' validates on every training case, so the cascade gets a previous-stage segmentation of each
    tiny_dataset.train(name, "all", "3d_lowres", "-p", CASCADE_PLANS)
    next_stage = tiny_dataset.output_folder(name, "3d_lowres", CASCADE_PLANS) / "predicted_next_stage" / "3d_cascade_fullres"
    assert len({p.name.split(".")[0] for p in next_stage.glob("case_*")}) == 6
    tiny_dataset.train(name, 0, "3d_cascade_fullres", "-p", CASCADE_PLANS)
    ckpt = torch.load(tiny_dataset.output_folder(name, "3d_cascade_fullres", CASCADE_PLANS) / "fold_0" /
                      "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # every layer that reads the input sees the image + the one-hot of the low stage's 2 foreground classes
    with torch.device("meta"):
        net = get_architecture(get_arch(trainer)).builder(_spec(cascade_plans), 3, 3, True)
    for key in net.keys_to_in_proj:
        assert ckpt["network_weights"][f"{key}.weight"].shape[1] == 3, key

    low, cascade = tmp_path / "low", tmp_path / "cascade"
    common = ["-i", str(tiny_dataset.raw / "imagesTs"), "-d", str(DATASET_ID), "-tr", name, "-p", CASCADE_PLANS,
              "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"]
    run(["nnUNetv2_predict", *common, "-o", str(low), "-c", "3d_lowres", "-f", "all"], tiny_dataset.env)
    run(["nnUNetv2_predict", *common, "-o", str(cascade), "-c", "3d_cascade_fullres", "-f", "0",
         "-prev_stage_predictions", str(low)], tiny_dataset.env)
    for folder in (low, cascade):
        for seg in assert_same_geometry(folder, tiny_dataset.raw / "imagesTs"):
            assert set(np.unique(seg)) <= {0, 1, 2}


@pytest.mark.parametrize("trainer", PAPER_TRAINERS)
def test_every_network_reads_the_cascade_input(cascade_plans, trainer):
    """Built from ``3d_cascade_fullres`` as the trainer builds it (1 image + 2 one-hot channels): every
    layer named in ``keys_to_in_proj`` reads 3 channels and a forward pass gives the plan's outputs."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import nnunet_ext.trainers

    pm = PlansManager(cascade_plans)
    cls = getattr(nnunet_ext.trainers, trainer)
    torch.manual_seed(0)
    net = cls.build_network_architecture(pm, pm.get_configuration("3d_cascade_fullres"), 3, 3, True)
    weights = net.state_dict()
    for key in net.keys_to_in_proj:
        assert weights[f"{key}.weight"].shape[1] == 3, key
    patch = _spec(cascade_plans).patch_size
    with torch.no_grad():
        out = net(torch.randn(1, 3, *patch))
    assert tuple(out[0].shape) == (1, 3, *patch)


def get_arch(trainer: str) -> str:
    return next(a for a in available_architectures() if get_architecture(a).trainer == trainer)


def _spec(plans: dict):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.architectures import PlanSpec

    return PlanSpec.from_configuration(PlansManager(plans).get_configuration("3d_cascade_fullres"))


# --------------------------------------------------------------------------- comparing trainers
@pytest.mark.parametrize("trainer", QUICKEST_PAIR)  # nnU-Net's --val path; loading our checkpoints is tested per trainer
def test_validation_with_best_checkpoint(tiny_dataset, trainer):
    fold = trained_fold0(tiny_dataset, trainer)
    assert (fold / "checkpoint_best.pth").is_file()
    (fold / "validation" / "summary.json").unlink()
    p = tiny_dataset.train(short(trainer), 0, "3d_fullres", "--val", "--val_best")
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}, p.stdout[-2000:]


def test_find_best_configuration_and_ensemble_two_trainers(tiny_dataset, tmp_path):
    pair = [short(t) for t in QUICKEST_PAIR]
    for name in pair:
        trained_fold0(tiny_dataset, name.split("_")[0])
        tiny_dataset.train(name, 0, "3d_fullres", "--val", "--npz")  # validation probabilities for ensembling
        assert list((tiny_dataset.output_folder(name) / "fold_0" / "validation").glob("*.npz"))
    run(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", "3d_fullres", "-tr", *pair, "-f", "0",
         "-np", "1"], tiny_dataset.env)
    info = json.loads((tiny_dataset.root / "results" / tiny_dataset.raw.name / "inference_information.json").read_text())
    compared = set(info["all_results"])
    assert {f"{n}__nnUNetPlans__3d_fullres" for n in pair} <= compared
    assert any(k.startswith("ensemble___") for k in compared), compared
    assert all(math.isfinite(v) for v in info["all_results"].values())

    for name in pair:
        tiny_dataset.predict(name, tmp_path / name, "0", "--save_probabilities")
    run(["nnUNetv2_ensemble", "-i", *(str(tmp_path / n) for n in pair), "-o", str(tmp_path / "ensemble"),
         "-np", "1"], tiny_dataset.env)
    for seg in assert_same_geometry(tmp_path / "ensemble", tiny_dataset.raw / "imagesTs"):
        assert set(np.unique(seg)) <= {0, 1, 2}


# --------------------------------------------------------------------------- resume
def test_missu_resume_keeps_its_loss_terms_aligned_with_epochs(tiny_dataset):
    first, second = short("MISSUTrainer"), short("MISSUTrainer", 2)
    copy_as_interrupted(trained_fold0(tiny_dataset, "MISSUTrainer"), tiny_dataset.output_folder(second) / "fold_0")
    out = tiny_dataset.train(second, 0, "3d_fullres", "--c").stdout
    assert "Epoch 1" in out and "Epoch 0" not in out, out[-3000:]
    ckpt = torch.load(tiny_dataset.output_folder(second) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 2
    log = ckpt["logging"]
    assert len(log["train_losses"]) == 2
    for key in ("train_seg_losses", "train_distillation_losses"):
        assert len(log[key]) == 2 and all(np.isfinite(log[key])), (key, log[key])
    # the first epoch's terms are the interrupted run's own
    before = torch.load(tiny_dataset.output_folder(first) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                        weights_only=False)["logging"]
    assert log["train_seg_losses"][0] == before["train_seg_losses"][0]

