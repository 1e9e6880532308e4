"""The trainer's step outside a training run (what benchmark, gpu-check and the memory estimate run) is the
trainer's own: same loss (deep-supervision weights, MISSU's distillation), same optimizer, same step result."""

import pytest
import torch

import nnunet_ext.trainers as trainers
from nnunet_ext.trainers.step import NNUNET, step_trainer, synthetic_batch, target_shapes, trainer_of
from tests.trainers.conftest import PATCH


@pytest.mark.parametrize("name", ["MISSUTrainer", "UNETRPPTrainer", "SmallUNetTrainer"])
def test_step_trainer_steps_as_the_initialised_trainer(make_trainer, name):
    cls = getattr(trainers, name)
    real = make_trainer(cls)
    light = step_trainer(cls, real.plans_manager, real.dataset_json, "cpu", network=real.network)
    assert type(light.loss) is type(real.loss)
    seg = lambda loss: getattr(loss, "seg_loss", loss)  # noqa: E731  (MISSU wraps nnU-Net's loss)
    assert list(seg(light.loss).weight_factors) == pytest.approx(list(seg(real.loss).weight_factors))
    assert type(light.optimizer) is type(real.optimizer) and light.optimizer.defaults == real.optimizer.defaults
    assert [tuple(t[2:]) for t in target_shapes(light, 2)] == \
        [tuple(round(p * s) for p, s in zip(PATCH, scale)) for scale in real._get_deep_supervision_scales()]

    batch = synthetic_batch(light, 2, seed=3)
    state = {k: v.clone() for k, v in real.network.state_dict().items()}
    torch.manual_seed(0)
    ours = light.train_step(batch)
    real.network.load_state_dict(state)
    real.optimizer.state.clear()
    torch.manual_seed(0)
    theirs = real.train_step(batch)
    assert set(ours) == set(theirs) and ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    if name == "MISSUTrainer":  # the distillation term is part of the step
        assert ours["loss"] == pytest.approx(ours["seg_loss"] + cls.distillation_weight * ours["distillation_loss"],
                                             rel=1e-5)


def test_trainer_of_each_network():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert trainer_of(NNUNET) is nnUNetTrainer and trainer_of("missu") is trainers.MISSUTrainer
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        trainer_of("nope")
