"""UNETRPPTrainer: UNETR++'s stem and strides from nnU-Net's plan objects."""

import torch

import nnunet_ext.trainers as trainers
from tests.plans import ANISO_PATCH, ANISO_SPACING, ANISO_STRIDES, plans_manager


def test_builds_the_stem_remainder_strides_from_an_anisotropic_plan():
    pm = plans_manager(ANISO_PATCH, ANISO_STRIDES, ANISO_SPACING)
    with torch.device("meta"):
        net = trainers.UNETRPPTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, True)
    # plan total (4, 32, 32); plans.stem_remainder_strides by hand: the stem tokenizes z by 2, the rest of z
    # is pooled in the deepest stage only
    assert net.encoder.strides == ((2, 4, 4), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert net.deep_supervision_scales == [[1.0, 1.0, 1.0], [0.5, 0.25, 0.25], [0.5, 0.125, 0.125]]
