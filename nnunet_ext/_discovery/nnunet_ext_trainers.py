"""Imported by nnU-Net as a top-level module when it searches ``nnUNet_extTrainer``.

The classes live in :mod:`nnunet_ext.trainers` (imported normally, so class identity and
checkpoints stay clean); this shim only re-exports them, including the short-run variants
that :mod:`nnunet_ext.trainers` creates on attribute access (``UNETRPPTrainer_5epochs_20iters``).

A process that inherited ``nnUNet_extTrainer`` but cannot import ``nnunet_ext`` (another
environment, a moved editable checkout) gets one line naming the fix instead of a traceback,
and nnU-Net then reports the trainer as not found.
"""

import os as _os
import sys as _sys

try:
    import nnunet_ext.trainers as _trainers
except ImportError as _error:
    _trainers = None
    print(f"nnunet-ext: nnUNet_extTrainer lists {_os.path.dirname(_os.path.abspath(__file__))}, but this Python "
          f"({_sys.executable}) cannot import nnunet_ext ({_error}). Install nnunet-ext into this environment "
          "(`pip install nnunet-ext`, or `pip install -e .` again in a moved checkout), or remove that folder "
          "from nnUNet_extTrainer.", file=_sys.stderr)
else:
    from nnunet_ext.trainers import *  # noqa: F401,F403


def __getattr__(name):
    if _trainers is None:
        raise AttributeError(name)
    return getattr(_trainers, name)
