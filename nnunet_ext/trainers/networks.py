"""The concrete trainers: a few lines each, everything else lives in :class:`AbstractExtTrainer`."""

from nnunet_ext.trainers.base import AbstractExtTrainer


class SmallUNetTrainer(AbstractExtTrainer):
    """A small plain U-Net from the plans; the spine's proof trainer (fast on CPU)."""

    arch = "small_unet"
