"""nnU-Net trainers for our networks (found by ``nnUNetv2_train -tr NAME`` through the
``nnUNet_extTrainer`` hook installed with the package).

Short-run variants such as ``UNETRPPTrainer_5epochs`` or ``SmallUNetTrainer_1epoch_4iters``
(also for stock ``nnUNetTrainer``) are created on first access; see :mod:`.variants`. They time
their train steps with :class:`~.timing.StepTimingMixin`, which any trainer can mix in.
"""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.base import AbstractExtTrainer
from nnunet_ext.trainers.missu import MISSUTrainer, MISSUTrainerPyTorchInit, MISSUTrainerNoDistillation
from nnunet_ext.trainers import networks as _networks
from nnunet_ext.trainers.networks import *  # noqa: F401,F403  (one class per registered network)
from nnunet_ext.trainers.variants import make_variant, parse_variant

#: every trainer class :mod:`.networks` defines (a new one needs no entry anywhere)
_network_trainers = [name for name, obj in vars(_networks).items() if isinstance(obj, type)
                     and issubclass(obj, AbstractExtTrainer) and obj.__module__ == _networks.__name__]
__all__ = ["AbstractExtTrainer", "MISSUTrainer", "MISSUTrainerNoDistillation", "MISSUTrainerPyTorchInit",
           *_network_trainers]


def __getattr__(name: str):
    parsed = parse_variant(name)
    if parsed is not None:
        base_name, epochs, iters = parsed
        base = nnUNetTrainer if base_name == "nnUNetTrainer" else globals().get(base_name)
        if isinstance(base, type) and issubclass(base, nnUNetTrainer) and base is not AbstractExtTrainer:
            cls = make_variant(base, name, epochs, iters, __name__)
            globals()[name] = cls  # cache: one class object per name (identity, pickling)
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
