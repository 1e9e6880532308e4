"""Make stock nnU-Net find our trainers.

nnU-Net v2 looks for trainers it does not ship in the folders listed in the environment
variable ``nnUNet_extTrainer`` (joined by ``os.pathsep``). The ``nnunet_ext.pth`` file that
the wheel installs into site-packages imports this module at interpreter start-up, which
appends our discovery folder to that variable, keeping any folders the user listed first.
Child processes inherit it, so ``nnUNetv2_train ... -tr UNETRPPTrainer`` works in a new shell.
"""

import os

DISCOVERY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_discovery")
ENV_VAR = "nnUNet_extTrainer"


def register_discovery_path(environ=os.environ) -> str:
    """Append :data:`DISCOVERY_DIR` to ``environ[nnUNet_extTrainer]`` once; return the new value."""
    parts = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if DISCOVERY_DIR not in parts:
        parts.append(DISCOVERY_DIR)
    environ[ENV_VAR] = os.pathsep.join(parts)
    return environ[ENV_VAR]


register_discovery_path()
