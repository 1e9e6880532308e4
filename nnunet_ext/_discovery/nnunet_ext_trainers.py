"""Imported by nnU-Net as a top-level module when it searches ``nnUNet_extTrainer``.

The classes live in :mod:`nnunet_ext.trainers` (imported normally, so class identity and
checkpoints stay clean); this shim only re-exports them, including the short-run variants
that :mod:`nnunet_ext.trainers` creates on attribute access (``UNETRPPTrainer_5epochs_20iters``).
"""

import nnunet_ext.trainers as _trainers
from nnunet_ext.trainers import *  # noqa: F401,F403


def __getattr__(name):
    return getattr(_trainers, name)
