"""MISSU's trainers: nnU-Net's recipe plus the self-distillation loss.

Total loss = nnU-Net's segmentation loss (DC + CE with deep supervision, ``self.loss`` as nnU-Net
builds it) + lambda * L_sd (Wang et al., IEEE TMI 2023, Eq. for the total loss; lambda = 0.3 in the
paper, which used CE as its segmentation loss).

How it plugs in without copying nnU-Net's ``train_step``: :meth:`MISSUTrainer._build_loss` wraps
nnU-Net's loss in :class:`SegmentationWithDistillationLoss`, which after the segmentation term takes
the local / MSF feature pairs that the network stored during its training-mode forward and adds
lambda * L_sd. So nnU-Net's autocast, grad scaler and gradient clipping apply unchanged. In
validation (eval mode) the network runs no MSF and the wrapper returns the segmentation loss only,
so ``val_losses`` stay comparable with other trainers.

Logging: each epoch the mean segmentation term and mean L_sd go to the training log
(``print_to_log_file``) and to nnU-Net's logger under ``train_seg_losses`` and
``train_distillation_losses`` (one value per epoch, as its local logger requires; saved in the
checkpoint's ``logging``).

Ablation: :class:`MISSUTrainerNoDistillation` sets ``distillation_weight = 0.0``; any other lambda is
a two-line subclass. With lambda = 0 the MSF still runs in training and L_sd is still logged (only
its weight is zero), so both runs cost the same and DDP sees every parameter used.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.utilities.collate_outputs import collate_outputs
from torch import nn

from nnunet_ext.blocks.distillation import self_distillation_loss
from nnunet_ext.trainers.base import AbstractExtTrainer

FeaturePairs = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]


class SegmentationWithDistillationLoss(nn.Module):
    """``loss(output, target) = seg_loss(output, target) + weight * L_sd(F, O)``.

    ``take_features()`` returns the (F, O) pair of the forward that produced ``output`` and clears it,
    or None (eval-mode forward: then only the segmentation loss is returned). The terms of the last
    call with features are kept, detached, in :attr:`last_terms` = (seg, L_sd).
    """

    def __init__(self, seg_loss: nn.Module, take_features: Callable[[], FeaturePairs | None], weight: float):
        super().__init__()
        self.seg_loss = seg_loss
        self.take_features = take_features
        self.weight = float(weight)
        self.last_terms: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, output, target) -> torch.Tensor:
        seg = self.seg_loss(output, target)
        features = self.take_features()
        if features is None:
            return seg
        sd = self_distillation_loss(*features)
        self.last_terms = (seg.detach(), sd.detach())
        return seg + self.weight * sd


class MISSUTrainer(AbstractExtTrainer):
    """MISSU (Wang et al., IEEE TMI 2023) with nnU-Net's recipe plus lambda * L_sd (lambda = 0.3)."""

    #: lambda of the self-distillation term (paper: 0.3); change it in a subclass
    distillation_weight: float = 0.3

    def _build_loss(self):
        return SegmentationWithDistillationLoss(super()._build_loss(), self._take_distillation_features,
                                                self.distillation_weight)

    def _take_distillation_features(self) -> FeaturePairs | None:
        return self._plain_network().take_distillation_features()

    def train_step(self, batch: dict) -> dict:
        self.loss.last_terms = None
        result = super().train_step(batch)
        terms = self.loss.last_terms
        if terms is not None:
            result["seg_loss"] = terms[0].cpu().numpy()
            result["distillation_loss"] = terms[1].cpu().numpy()
        return result

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        for key, log_key, text in (("seg_loss", "train_seg_losses", "train_seg_loss"),
                                   ("distillation_loss", "train_distillation_losses", "train_distillation_loss")):
            values = outputs.get(key)
            if values is None:
                continue
            if self.is_ddp:
                gathered = [None for _ in range(dist.get_world_size())]
                dist.all_gather_object(gathered, values)
                mean = float(np.vstack(gathered).mean())
            else:
                mean = float(np.mean(values))
            self._log_per_epoch(log_key, mean)
            self.print_to_log_file(text, np.round(mean, decimals=4))

    def _log_per_epoch(self, key: str, value: float) -> None:
        """Log ``value`` under a key nnU-Net's local logger does not know (it accepts only keys it holds,
        one value per epoch): register the key, padding epochs that lack it (resumed runs) with NaN."""
        local = getattr(self.logger, "local_logger", self.logger)
        store = getattr(local, "my_fantastic_logging", None)
        if store is None:
            return
        values = store.setdefault(key, [])
        values.extend([float("nan")] * (self.current_epoch - len(values)))
        self.logger.log(key, value, self.current_epoch)


class MISSUTrainerNoDistillation(MISSUTrainer):
    """MISSU with lambda = 0: the ablation without self-distillation (MSF still runs; L_sd is logged)."""

    distillation_weight = 0.0


class MISSUTrainerPyTorchInit(MISSUTrainer):
    """Ablation: MISSU's convolutions with PyTorch's default init (TransBTS's code) instead of He init."""

    network_kwargs = {"conv_init": "pytorch"}
