"""Networks, one module each, registered by name (see :mod:`.registry`).

Adding a network: write its module with a ``@register_architecture`` builder and import it here.
"""

from nnunet_ext.architectures.plans import PlanError, PlanSpec
from nnunet_ext.architectures.registry import (ArchEntry, available_architectures, build_network,
                                               get_architecture, register_architecture)

# registered architectures (the registry sorts them by name)
from nnunet_ext.architectures import missu, segmamba, segresmamba, small_unet, unetr_pp  # noqa: F401,E402

__all__ = ["ArchEntry", "PlanError", "PlanSpec", "available_architectures", "build_network",
           "get_architecture", "register_architecture"]
