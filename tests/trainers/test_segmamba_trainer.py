"""SegMambaTrainer builds SegMamba from nnU-Net's plan objects (as at training and at inference)."""

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunet_ext.trainers as trainers
from nnunet_ext.architectures import PlanError, get_architecture
from nnunet_ext.architectures.segmamba import SegMamba


def _plans(patch, strides, spacing):
    """A plans file cut down to what the builder reads: a 3d_fullres and a 2d configuration."""
    n = len(strides)
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": [min(32 * 2 ** i, 320) for i in range(n)],
                            "strides": strides},
            "_kw_requires_import": []}
    return PlansManager({"configurations": {
        "3d_fullres": {"data_identifier": "d_3d", "patch_size": patch, "spacing": spacing, "architecture": arch},
        "2d": {"data_identifier": "d_2d", "patch_size": patch[1:], "spacing": spacing[1:],
               "architecture": {**arch, "arch_kwargs": {**arch["arch_kwargs"], "strides": [s[1:] for s in strides]}}},
    }})


ANISO = _plans([28, 256, 256], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]],
               [3.0, 0.8, 0.8])


def test_trainer_class_registration_and_short_variant():
    assert trainers.SegMambaTrainer.arch == "segmamba" and "SegMambaTrainer" in trainers.__all__
    assert trainers.SegMambaTrainer.compile_network is False
    assert get_architecture("segmamba").trainer == "SegMambaTrainer"
    assert issubclass(trainers.SegMambaTrainer_1epoch_2iters, trainers.SegMambaTrainer)


def test_builds_from_plans_same_keys_for_training_and_inference():
    cm = ANISO.get_configuration("3d_fullres")
    with torch.device("meta"):
        train_net = trainers.SegMambaTrainer.build_network_architecture(ANISO, cm, 1, 3, True)
        infer_net = trainers.SegMambaTrainer.build_network_architecture(ANISO, cm, 1, 3, False)
        out = infer_net(torch.empty(1, 1, 28, 256, 256))
    assert isinstance(train_net, SegMamba) and train_net.deep_supervision and not infer_net.deep_supervision
    # the rule in segmamba.py's docstring: z (pooled twice) at the stem and the deepest down-sampling
    assert train_net.encoder.strides == [(2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    sd_train, sd_infer = train_net.state_dict(), infer_net.state_dict()
    assert sd_train.keys() == sd_infer.keys()
    assert all(sd_train[k].shape == sd_infer[k].shape for k in sd_train)
    assert out.shape == (1, 3, 28, 256, 256)


def test_2d_configuration_fails_at_once():
    with pytest.raises(PlanError, match="2D"):
        trainers.SegMambaTrainer.build_network_architecture(ANISO, ANISO.get_configuration("2d"), 1, 3, True)
