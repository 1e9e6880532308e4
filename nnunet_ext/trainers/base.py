"""One base trainer for every nnunet-ext network.

Concrete trainers are a few lines (see :mod:`nnunet_ext.trainers.networks`): a class named as a
registration's ``trainer`` trains that architecture (:meth:`AbstractExtTrainer.__init_subclass__`;
the registration is the one place linking the two) and sets, where needed, nnU-Net settings.
Everything else is stock nnU-Net: data loading, augmentation, DC+CE loss with deep supervision, SGD + poly LR,
1000 epochs x 250 iterations, validation and export.
"""

from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_ext.architectures import architecture_of_trainer, check_plan, get_architecture
from nnunet_ext.ops.backends import BackendUnavailableError, check_backend_setting


class AbstractExtTrainer(nnUNetTrainer):
    """nnU-Net trainer that builds a registered nnunet-ext architecture from the plans.

    A subclass whose name a registration gives as ``trainer`` gets that architecture as :attr:`arch`;
    its subclasses (ablations, short-run variants) inherit it. A network registered with ``uses_scan``
    trains without torch.compile (each selective scan would break the compiled graph).
    """

    #: registry name of the network this trainer builds (derived from the registry, never set by hand)
    arch: str = ""
    #: deep-supervision weights. False: nnU-Net's rule, 1/2^i for output i and 0 for the
    #: lowest-resolution one (right for its U-Net, whose lowest output sits next to the bottleneck).
    #: True: 1/2^i for every output, normalised -- for a network whose paper trains every head
    #: (with nnU-Net's rule one of its few heads would never learn)
    weight_every_output: bool = False
    #: constructor arguments of the network that this trainer overrides (an ablation or a paper
    #: variant is then a subclass setting only this); the predictor rebuilds the network through
    #: the same trainer class, so checkpoints load
    network_kwargs: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "arch" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: do not set 'arch'; name the trainer in the network's "
                            f"register_architecture(..., trainer='{cls.__name__}')")
        registered = architecture_of_trainer(cls.__name__)
        if registered is not None:
            cls.arch = registered

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if not self.arch:
            raise TypeError(f"{type(self).__name__} trains no registered network: name it as the trainer of "
                            f"one (register_architecture(..., trainer='{type(self).__name__}'))")
        # fail at once, before nnU-Net creates any output folder: a scan back-end that cannot run here
        # (one line: SystemExit, as for a bad command-line option) ...
        try:
            check_backend_setting(device)
        except (ValueError, BackendUnavailableError) as e:
            raise SystemExit(f"{type(self).__name__}: {e}") from None
        # ... and a plan the network cannot use
        plans_manager = PlansManager(plans)
        check_plan(self.arch, plans_manager.get_configuration(configuration), plans_manager, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Called by the trainer at ``initialize()`` and by ``nnUNetPredictor`` at inference (with
        ``enable_deep_supervision=False``): same plans give the same network and state-dict keys."""
        spec = check_plan(cls.arch, configuration_manager, plans_manager)
        return get_architecture(cls.arch).builder(spec, num_input_channels, num_output_channels,
                                                  enable_deep_supervision, **cls.network_kwargs)

    # ----------------------------------------------------------------- network access
    def _plain_network(self) -> nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        self._plain_network().deep_supervision = enabled

    def _get_deep_supervision_scales(self):
        """The network's own output scales (it may have fewer outputs than nnU-Net's U-Net)."""
        if not self.enable_deep_supervision:
            return None
        return [list(s) for s in self._plain_network().deep_supervision_scales]

    def _build_loss(self):
        """nnU-Net's loss (DC + CE, deep supervision); with :attr:`weight_every_output` the
        deep-supervision weights are 1/2^i over all outputs, normalised to sum 1."""
        loss = super()._build_loss()
        if self.enable_deep_supervision and self.weight_every_output:
            weights = 0.5 ** np.arange(len(self._get_deep_supervision_scales()))
            loss.weight_factors = tuple(weights / weights.sum())
        return loss

    def _do_i_compile(self) -> bool:
        if get_architecture(self.arch).uses_scan:
            return False
        return super()._do_i_compile()
