"""The concrete trainers: a few lines each, everything else lives in :class:`AbstractExtTrainer`."""

from nnunet_ext.trainers.base import AbstractExtTrainer

__all__ = ["SmallUNetTrainer", "UNETRPPTrainer", "SegResMambaTrainer", "SegMambaTrainer"]


class SmallUNetTrainer(AbstractExtTrainer):
    """A small plain U-Net from the plans; the spine's proof trainer (fast on CPU)."""

    arch = "small_unet"


class UNETRPPTrainer(AbstractExtTrainer):
    """UNETR++ (Shaker et al., IEEE TMI 2024) sized from the plans, trained with nnU-Net's recipe
    (which is also the paper's: SGD, Nesterov momentum 0.99, lr 0.01 with poly decay, weight decay 3e-5,
    gradient clipping at 12); its three deep-supervision heads all weighted 1/2^i, as the paper's code
    does, rather than nnU-Net's rule, which would leave the lowest-resolution head untrained."""

    arch = "unetr_pp"
    weight_every_output = True


class SegResMambaTrainer(AbstractExtTrainer):
    """SegResMamba (Das et al., MIDL 2025) sized from the plans, trained with nnU-Net's recipe;
    no torch.compile in training (each selective scan would break the compiled graph)."""

    arch = "segresmamba"
    compile_network = False


class SegMambaTrainer(AbstractExtTrainer):
    """SegMamba (Xing et al., MICCAI 2024) sized from the plans, trained with nnU-Net's recipe;
    no torch.compile in training (each selective scan would break the compiled graph)."""

    arch = "segmamba"
    compile_network = False
