"""SegMambaTrainer (and SegResMambaTrainer): torch.compile off, SegMamba's strides from nnU-Net's plan objects."""

import pytest
import torch

import nnunet_ext.trainers as trainers
from tests.plans import plans_manager


@pytest.mark.parametrize("cls", [trainers.SegMambaTrainer, trainers.SegResMambaTrainer])
def test_compile_is_off_for_the_selective_scans(cls, monkeypatch):
    monkeypatch.setenv("nnUNet_compile", "true")
    assert cls.__new__(cls)._do_i_compile() is False


def test_builds_the_stem_first_strides_from_an_anisotropic_plan():
    pm = plans_manager((28, 256, 256), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)),
                       (3.0, 0.8, 0.8))
    with torch.device("meta"):
        net = trainers.SegMambaTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, True)
    # plan total (4, 64, 64); plans.stem_first_strides by hand: z at the stem and at the deepest down-sampling
    assert net.encoder.strides == ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
