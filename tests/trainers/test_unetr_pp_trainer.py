"""UNETRPPTrainer: UNETR++'s stem and strides from nnU-Net's plan objects."""

import numpy as np
import pytest
import torch

import nnunet_ext.trainers as trainers
from tests.plans import ANISO_PATCH, ANISO_SPACING, ANISO_STRIDES, plans_manager
from tests.trainers.conftest import PATCH


def test_builds_the_stem_remainder_strides_from_an_anisotropic_plan():
    pm = plans_manager(ANISO_PATCH, ANISO_STRIDES, ANISO_SPACING)
    with torch.device("meta"):
        net = trainers.UNETRPPTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, True)
    # plan total (4, 32, 32); plans.stem_remainder_strides by hand: the stem tokenizes z by 2, the rest of z
    # is pooled in the deepest stage only
    assert net.encoder.strides == ((2, 4, 4), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert net.deep_supervision_scales == [[1.0, 1.0, 1.0], [0.5, 0.25, 0.25], [0.5, 0.125, 0.125]]


class UNETRPPTrainerNnUNetRule(trainers.UNETRPPTrainer):
    """UNETR++ with nnU-Net's deep-supervision weights (lowest-resolution output 0), for contrast."""

    weight_every_output = False


def _heads(net) -> dict:
    return {name: p for name, p in net.named_parameters() if ".seg_layers." in name and name.endswith("weight")}


@pytest.mark.parametrize("cls, every_head_learns", [(trainers.UNETRPPTrainer, True), (UNETRPPTrainerNnUNetRule, False)])
def test_every_deep_supervision_head_is_weighted_as_in_the_paper(make_trainer, cls, every_head_learns):
    t = make_trainer(cls)
    scales = t._get_deep_supervision_scales()
    assert len(scales) == 3
    expected = np.array([1, 0.5, 0.25]) / 1.75 if every_head_learns else np.array([1, 0.5, 0]) / 1.5
    np.testing.assert_allclose(t.loss.weight_factors, expected)

    seg = torch.randint(0, 3, (2, 1, *PATCH)).float()
    targets = [torch.nn.functional.interpolate(seg, scale_factor=s, mode="nearest-exact") for s in scales]
    t.train_step({"data": torch.randn(2, 1, *PATCH), "target": targets})
    heads = _heads(t.network)
    assert len(heads) == 3
    learned = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in heads.values()]
    assert learned == [True, True, every_head_learns]
