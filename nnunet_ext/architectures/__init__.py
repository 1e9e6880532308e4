"""Networks, one module each, registered by name (see :mod:`.registry`).

Adding a network: write its module (an :class:`~.base.ExtNetwork` and a builder registered with
``@register_architecture(name, trainer="NameTrainer", ..., downsamplings=N, stride_rule=RULE)``, rules
in :mod:`.plans`), import it here, and add the line ``class NameTrainer(AbstractExtTrainer): ...`` to
:mod:`nnunet_ext.trainers.networks`.

One vocabulary across the networks' arguments: ``strides`` (the down-sampling strides the
registry derives from the plan, shallowest first), ``widths`` (channels per stage), ``depths``
(blocks per stage; ``decoder_depths`` for the decoder), ``num_heads`` (attention heads) and
``deep_supervision`` (the one switch between all outputs and the full-resolution one).
"""

from nnunet_ext.architectures.plans import PlanError, PlanSpec
from nnunet_ext.architectures.registry import (ArchEntry, architecture_of_trainer, available_architectures,
                                               build_network, check_plan, get_architecture, register_architecture)

# registered architectures (the registry sorts them by name)
from nnunet_ext.architectures import missu, segmamba, segresmamba, small_unet, unetr_pp  # noqa: F401,E402

__all__ = ["ArchEntry", "PlanError", "PlanSpec", "architecture_of_trainer", "available_architectures",
           "build_network", "check_plan", "get_architecture", "register_architecture"]
