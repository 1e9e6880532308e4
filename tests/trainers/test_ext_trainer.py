"""What AbstractExtTrainer does for every registered network: build from nnU-Net's plan objects (as
at training and at inference), refuse an unusable plan before nnU-Net creates anything, and toggle deep
supervision through the network's one attribute."""

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_ext.trainers as trainers
from nnunet_ext.architectures import PlanError, available_architectures, get_architecture
from nnunet_ext.architectures.base import ExtNetwork
from tests.plans import ANISO_PATCH, ANISO_SPACING, ANISO_STRIDES, make_plans, plans_manager

ARCHS = sorted(available_architectures())
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 2,
                "file_ending": ".nii.gz"}


def _trainer(arch: str):
    return getattr(trainers, get_architecture(arch).trainer)


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_the_same_keys_for_training_and_inference(arch):
    pm = plans_manager(ANISO_PATCH, ANISO_STRIDES, ANISO_SPACING)
    cm = pm.get_configuration("3d_fullres")
    with torch.device("meta"):
        train_net = _trainer(arch).build_network_architecture(pm, cm, 1, 3, True)
        infer_net = _trainer(arch).build_network_architecture(pm, cm, 1, 3, False)
        out = infer_net(torch.empty(1, 1, *ANISO_PATCH))
    assert isinstance(train_net, ExtNetwork) and train_net.deep_supervision and not infer_net.deep_supervision
    sd_train, sd_infer = train_net.state_dict(), infer_net.state_dict()
    assert sd_train.keys() == sd_infer.keys()
    assert all(sd_train[k].shape == sd_infer[k].shape for k in sd_train)
    assert out.shape == (1, 3, *ANISO_PATCH)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_unusable_plan_fails_before_nnunet_starts(arch, monkeypatch):
    """nnU-Net's ``__init__`` creates the output folder: the check must come first."""
    monkeypatch.setattr(nnUNetTrainer, "__init__", lambda *a, **k: pytest.fail("nnU-Net's __init__ ran"))
    cls = _trainer(arch)
    plans = make_plans((16, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)), with_2d=True)
    with pytest.raises(PlanError, match=rf"{cls.__name__} .* configuration '2d' is 2D \(patch \[32, 32\]\)\. "
                                        r"Use a 3D configuration of these plans: 3d_fullres\."):
        cls(plans, "2d", 0, DATASET_JSON, torch.device("cpu"))
    indivisible = make_plans((18, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(PlanError, match=r"not divisible .* on axis 0 .*Set patch_size\[0\] to a multiple of 4"):
        cls(indivisible, "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))


def test_abstract_trainer_names_the_missing_arch():
    with pytest.raises(TypeError, match="trains no registered network: name it as the trainer"):
        trainers.AbstractExtTrainer(make_plans((16, 32, 32), ((1, 1, 1), (2, 2, 2))), "3d_fullres", 0, DATASET_JSON,
                                    torch.device("cpu"))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_trainer_has_short_variants(arch):
    cls = _trainer(arch)
    assert cls.arch == arch and issubclass(getattr(trainers, f"{cls.__name__}_1epoch_2iters"), cls)


@pytest.mark.parametrize("arch", ARCHS)
def test_only_networks_with_a_scan_train_without_torch_compile(arch, monkeypatch):
    """nnU-Net compiles on CUDA (asked here as if on a GPU); the registration's ``uses_scan`` turns it off."""
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    cls = _trainer(arch)
    trainer = object.__new__(getattr(trainers, f"{cls.__name__}_1epoch_2iters"))  # no __init__: no folders
    assert trainer._do_i_compile() is (not get_architecture(arch).uses_scan)
    assert get_architecture(arch).uses_scan is (arch in ("segmamba", "segresmamba"))
