"""MISSUTrainer: nnU-Net's loss plus lambda * L_sd, logged per epoch; a real trainer on a minimal plan."""

import numpy as np
import pytest
import torch

import nnunet_ext.trainers as trainers
from nnunet_ext.blocks.distillation import self_distillation_loss
from nnunet_ext.trainers.missu import MISSUTrainer, MISSUTrainerNoDistillation, SegmentationWithDistillationLoss
from tests.trainers.conftest import PATCH


def test_loss_combination():
    seg_loss = lambda out, tgt: (out - tgt).abs().mean()  # noqa: E731
    f = [torch.randn(1, 2, 4, 4, 4, requires_grad=True)]
    o = [torch.randn(1, 3, 4, 4, 4, requires_grad=True)]
    pending = [(f, o)]
    loss = SegmentationWithDistillationLoss(seg_loss, lambda: pending.pop() if pending else None, 0.3)
    out, tgt = torch.ones(2), torch.zeros(2)
    total = loss(out, tgt)
    sd = self_distillation_loss(f, o)
    torch.testing.assert_close(total, 1.0 + 0.3 * sd)
    torch.testing.assert_close(loss.last_terms[1], sd.detach())
    total.backward()
    assert f[0].grad.abs().sum() > 0 and o[0].grad.abs().sum() > 0
    # no features (an eval-mode forward): the segmentation loss alone
    torch.testing.assert_close(loss(out, tgt), torch.tensor(1.0))


def _batch():
    seg = torch.randint(0, 3, (2, 1, *PATCH)).float()
    return {"data": torch.randn(2, 1, *PATCH),
            "target": [seg, seg[:, :, ::2, ::2, ::2], seg[:, :, ::4, ::4, ::4]]}


@pytest.mark.parametrize("cls, weight", [(MISSUTrainer, 0.3), (MISSUTrainerNoDistillation, 0.0)])
def test_train_step_adds_weighted_distillation_and_logs_both_terms(make_trainer, cls, weight):
    t = make_trainer(cls)
    assert isinstance(t.loss, SegmentationWithDistillationLoss) and t.loss.weight == weight
    assert t._get_deep_supervision_scales() == t.network.deep_supervision_scales
    out = t.train_step(_batch())
    assert set(out) == {"loss", "seg_loss", "distillation_loss"} and out["distillation_loss"] > 0
    np.testing.assert_allclose(out["loss"], out["seg_loss"] + weight * out["distillation_loss"], rtol=1e-5)
    assert t.network.distillation_features is None  # taken by the loss
    # MSF learns only through L_sd: its gradients are zero exactly when lambda is
    msf_grad = sum(p.grad.abs().sum() for p in t.network.msf.parameters())
    assert (msf_grad > 0) == (weight > 0)

    t.on_train_epoch_end([out, out])
    assert t.logger.get_value("train_distillation_losses", 0) == pytest.approx(float(out["distillation_loss"]))
    assert t.logger.get_value("train_seg_losses", 0) == pytest.approx(float(out["seg_loss"]))
    log = open(t.log_file).read()
    assert "train_seg_loss" in log and "train_distillation_loss" in log

    # validation: eval mode, no MSF, segmentation loss only
    t.on_validation_epoch_start()
    with torch.no_grad():
        val = t.validation_step(_batch())
    assert np.isfinite(val["loss"]) and t.network.distillation_features is None


def test_short_run_variants_keep_the_distillation_weight():
    assert trainers.MISSUTrainer_1epoch_2iters.distillation_weight == 0.3  # paper: lambda = 0.3
    assert trainers.MISSUTrainerNoDistillation_5epochs.distillation_weight == 0.0
