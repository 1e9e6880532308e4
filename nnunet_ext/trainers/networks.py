"""The concrete trainers: one line each (a class named as its network's registration names it),
plus nnU-Net settings where a network needs them; everything else lives in :class:`AbstractExtTrainer`.
"""

from nnunet_ext.trainers.base import AbstractExtTrainer


class SmallUNetTrainer(AbstractExtTrainer):
    """A small plain U-Net from the plans; the spine's proof trainer (fast on CPU)."""


class UNETRPPTrainer(AbstractExtTrainer):
    """UNETR++ (Shaker et al., IEEE TMI 2024) sized from the plans, trained with nnU-Net's recipe
    (which is also the paper's: SGD, Nesterov momentum 0.99, lr 0.01 with poly decay, weight decay 3e-5,
    gradient clipping at 12); its three deep-supervision heads all weighted 1/2^i, as the paper's code
    does, rather than nnU-Net's rule, which would leave the lowest-resolution head untrained."""

    weight_every_output = True


class SegResMambaTrainer(AbstractExtTrainer):
    """SegResMamba (Das et al., MIDL 2025) sized from the plans, trained with nnU-Net's recipe;
    no torch.compile in training (each selective scan would break the compiled graph)."""


class SegResMambaTrainerNoToM(SegResMambaTrainer):
    """Ablation: SegResMamba without its ToM layers (its SegResNet backbone alone).

    Same widths, blocks, norms and heads; measures what the Mamba layers add."""

    network_kwargs = {"mamba_levels": ()}


class SegResMambaTrainerWide(SegResMambaTrainer):
    """SegResMamba at nnU-Net's widths: 32, 64, 128, 256 channels (paper: 16 to 128).

    About 4x the parameters and convolution MACs; tests whether the paper's width limits it."""

    network_kwargs = {"widths": (32, 64, 128, 256)}


class SegResMambaTrainerHeInit(SegResMambaTrainer):
    """Ablation: SegResMamba's convolutions with nnU-Net's He init instead of PyTorch's default.

    Measures what the initialisation of the un-normalised residual stream costs (see
    :class:`~nnunet_ext.architectures.segresmamba.SegResMamba`'s ``conv_init``)."""

    network_kwargs = {"conv_init": "he"}


class SegMambaTrainer(AbstractExtTrainer):
    """SegMamba (Xing et al., MICCAI 2024) sized from the plans, trained with nnU-Net's recipe;
    no torch.compile in training (each selective scan would break the compiled graph)."""

