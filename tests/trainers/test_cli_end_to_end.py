"""End to end through the stock console scripts: plan+preprocess, train, predict, resume, bad plans."""

import json

import numpy as np
import pytest
import torch

from nnunet_ext.architectures import available_architectures, get_architecture
from tests.nnunet_cli import assert_same_geometry, copy_as_interrupted

pytestmark = pytest.mark.e2e

TRAINERS = [get_architecture(a).trainer for a in available_architectures()]
#: trainers whose networks run the selective scan (its back-end is chosen at run time)
SCAN_TRAINERS = {get_architecture(a).trainer for a in available_architectures(uses_scan=True)}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_train_and_predict_with_stock_cli(tiny_dataset, trainer, tmp_path):
    short = f"{trainer}_1epoch_2iters"
    tiny_dataset.train(short)
    fold = tiny_dataset.output_folder(short) / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}  # nnU-Net evaluated both foreground classes

    tiny_dataset.predict(short, tmp_path / "pred", "0", "--save_probabilities")
    for seg in assert_same_geometry(tmp_path / "pred", tiny_dataset.raw / "imagesTs"):
        assert set(np.unique(seg)) <= {0, 1, 2}

    if trainer in SCAN_TRAINERS:  # the same checkpoint predicts with the PyTorch scan forced
        tiny_dataset.predict(short, tmp_path / "pred_torch", "0", "--save_probabilities",
                             env={"NNUNET_EXT_SCAN_BACKEND": "torch"})
        npzs = sorted((tmp_path / "pred").glob("*.npz"))
        assert npzs and [p.name for p in npzs] == sorted(p.name for p in (tmp_path / "pred_torch").glob("*.npz"))
        for npz in npzs:
            auto, forced = np.load(npz)["probabilities"], np.load(tmp_path / "pred_torch" / npz.name)["probabilities"]
            assert auto.shape == forced.shape, npz.name
            assert np.isfinite(auto).all() and np.isfinite(forced).all(), npz.name
            # Only the segmentation is promised here. The back-ends compute the same function (compared
            # in float64 and with float32-derived tolerances in tests/ops/test_backend_equivalence.py
            # and tests/blocks/test_mamba_blocks.py), but an untrained network amplifies their float32
            # rounding differences by an unknown, input-dependent factor, so no tolerance on
            # probabilities follows; and where two classes are nearly tied that rounding can flip the
            # argmax. Such voxels are rare: at most 0.5 % may differ.
            agree = (forced.argmax(0) == auto.argmax(0)).mean()
            assert agree >= 0.995, f"{npz.name}: segmentations agree on {agree:.3%} of voxels only"


def test_resume_with_c_continues_from_latest_checkpoint(tiny_dataset):
    first, second = "UNETRPPTrainer_1epoch_2iters", "UNETRPPTrainer_2epochs_2iters"
    if not (tiny_dataset.output_folder(first) / "fold_0" / "checkpoint_final.pth").is_file():
        tiny_dataset.train(first)
    copy_as_interrupted(tiny_dataset.output_folder(first) / "fold_0", tiny_dataset.output_folder(second) / "fold_0")
    out = tiny_dataset.train(second, 0, "3d_fullres", "--c").stdout
    assert "Epoch 1" in out and "Epoch 0" not in out, out[-3000:]
    ckpt = torch.load(tiny_dataset.output_folder(second) / "fold_0" / "checkpoint_final.pth",
                      map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2


def test_2d_configuration_is_refused_with_the_3d_names(tiny_dataset):
    assert "2d" in tiny_dataset.plans()["configurations"]
    p = tiny_dataset.train("SmallUNetTrainer", 0, "2d", check=False)
    assert p.returncode != 0
    assert "configuration '2d' is 2D" in p.stderr and "Use a 3D configuration of these plans: 3d_fullres" in p.stderr


def test_indivisible_patch_is_refused_before_any_output(tiny_dataset):
    plans = tiny_dataset.plans()
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 40, 32]
    plans["configurations"]["3d_fullres"]["patch_size"] = [34, 40, 32]
    tiny_dataset.write_plans("nnUNetPlansBadPatch", plans)
    p = tiny_dataset.train("SmallUNetTrainer", 0, "3d_fullres", "-p", "nnUNetPlansBadPatch", check=False)
    assert p.returncode != 0
    assert "not divisible by the network's total stride [8, 8, 8] on axis 0" in p.stderr
    assert "Set patch_size[0] to a multiple of 8 (e.g. 32 or 40)" in p.stderr
    assert not tiny_dataset.output_folder("SmallUNetTrainer", plans="nnUNetPlansBadPatch").exists()
