"""A trainer's own training step outside a training run: what ``nnunet-ext benchmark``, ``gpu-check``
and the memory estimate (:mod:`nnunet_ext.planning.estimate`) run.

:func:`step_trainer` makes an object of the trainer class, with no output folder, log or data loader,
that holds what nnU-Net's ``train_step`` reads, each part made by the trainer's own method: the
network (``build_network_architecture``), the loss (``_build_loss``: DC + CE with the trainer's
deep-supervision weights and extra terms, e.g. MISSU's self-distillation), the optimizer
(``configure_optimizers``: SGD, momentum 0.99, Nesterov) and, on CUDA, the GradScaler; no
torch.compile (of the network or the loss).
:func:`synthetic_batch` is a batch as nnU-Net's data loader delivers it (the target at every
deep-supervision scale). ``trainer.train_step(batch)`` is then nnU-Net's step with the trainer's
overrides: autocast float16 + GradScaler on CUDA, float32 on a CPU, gradient clipping at 12.

The object is built without ``__init__``: a trainer that changes settings there (rather than in
class attributes and methods, as ours do) keeps nnU-Net's defaults here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ext.architectures import get_architecture

#: the name that stands for stock nnU-Net's trainer and network in the benchmarks
NNUNET = "nnunet"


def trainer_class(name: str) -> type:
    """A trainer class by name: ours (incl. short-run variants such as ``MISSUTrainer_1epoch_2iters``)
    or stock ``nnUNetTrainer``. Raises ``KeyError`` naming the known trainers."""
    import nnunet_ext.trainers as trainers

    if name == "nnUNetTrainer":
        return nnUNetTrainer
    cls = getattr(trainers, name, None)
    if isinstance(cls, type) and issubclass(cls, nnUNetTrainer) and cls is not trainers.AbstractExtTrainer:
        return cls
    known = ["nnUNetTrainer", *[n for n in trainers.__all__ if n != "AbstractExtTrainer"]]
    raise KeyError(f"unknown trainer '{name}'; known: {', '.join(known)} (and their short-run variants "
                   f"such as {known[1]}_1epoch_2iters)")


def trainer_of(arch: str) -> type:
    """The trainer class that trains registered network ``arch`` (:data:`NNUNET`: ``nnUNetTrainer``)."""
    return nnUNetTrainer if arch == NNUNET else trainer_class(get_architecture(arch).trainer)


def input_channels(plans_manager: PlansManager, configuration_manager, dataset_json: dict) -> int:
    """Input channels of the network for this configuration, as nnU-Net determines them."""
    return determine_num_input_channels(plans_manager, configuration_manager, dataset_json)


def build_network(trainer_cls: type, plans_manager: PlansManager, configuration_manager, dataset_json: dict,
                  deep_supervision: bool = True) -> nn.Module:
    """The network ``trainer_cls`` trains for this plan, built as the trainer builds it at
    ``initialize()``, on the current default device."""
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_cls.build_network_architecture(plans_manager, configuration_manager,
                                                  input_channels(plans_manager, configuration_manager, dataset_json),
                                                  heads, deep_supervision)


def step_trainer(trainer_cls: type, plans: dict | PlansManager, dataset_json: dict, device="cpu",
                 configuration: str | ConfigurationManager = "3d_fullres",
                 network: nn.Module | None = None) -> nnUNetTrainer:
    """An object of ``trainer_cls`` ready for ``train_step`` (see the module docstring) for
    ``configuration`` of the plans (a name, or a ``ConfigurationManager``, e.g. a planner's candidate).

    ``network``: use this one (e.g. built on the meta device and given fake parameters) instead of
    building it from the plan on ``device``. The loss and optimizer are built after the network.
    """
    plans_manager = plans if isinstance(plans, PlansManager) else PlansManager(plans)
    device = torch.device(device)
    trainer = object.__new__(trainer_cls)
    named = isinstance(configuration, str)
    defaults = {"is_ddp": False, "local_rank": 0, "device": device, "plans_manager": plans_manager,
                "configuration_manager": plans_manager.get_configuration(configuration) if named else configuration,
                "configuration_name": configuration if named else None, "dataset_json": dataset_json, "fold": 0,
                "label_manager": plans_manager.get_label_manager(dataset_json), "initial_lr": 1e-2,
                "weight_decay": 3e-5, "num_epochs": 1000, "current_epoch": 0, "enable_deep_supervision": True,
                "was_initialized": True, "logger": None,
                "grad_scaler": torch.amp.GradScaler("cuda") if device.type == "cuda" else None}
    trainer.__dict__.update(defaults)
    trainer._do_i_compile = lambda: False  # eager, as the network here is
    trainer.print_to_log_file = lambda *args, **kwargs: None  # no log file
    trainer.num_input_channels = input_channels(plans_manager, trainer.configuration_manager, dataset_json)
    if network is None:
        network = build_network(trainer_cls, plans_manager, trainer.configuration_manager, dataset_json).to(device)
    trainer.network = network
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    return trainer


def target_shapes(trainer: nnUNetTrainer, batch_size: int) -> list[tuple[int, ...]]:
    """(B, 1, *shape) of the target at each of the trainer's deep-supervision scales (nnU-Net's
    loader: the patch times the scale, rounded), or of the one full-resolution target."""
    patch = list(trainer.configuration_manager.patch_size)
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else None
    shapes = [tuple(round(p * s) for p, s in zip(patch, scale)) for scale in scales] if scales else [tuple(patch)]
    return [(int(batch_size), 1, *shape) for shape in shapes]


def synthetic_batch(trainer: nnUNetTrainer, batch_size: int | None = None, seed: int = 0, fake: bool = False) -> dict:
    """``{"data": (B, C, *patch) float32, "target": [(B, 1, *scaled patch) int16, ...]}`` as nnU-Net's
    loader gives it (a list with deep supervision, else one tensor), on the trainer's device: random
    values (seeded) with ``fake`` False, else uninitialised (``torch.empty``, e.g. under a FakeTensorMode).
    ``batch_size`` defaults to the configuration's."""
    batch = int(batch_size if batch_size is not None else trainer.configuration_manager.batch_size)
    num_classes = trainer.label_manager.num_segmentation_heads
    shape = (batch, trainer.num_input_channels, *trainer.configuration_manager.patch_size)
    dev = trainer.device
    if fake:
        data = torch.empty(shape, dtype=torch.float32, device=dev)
        targets = [torch.empty(s, dtype=torch.int16, device=dev) for s in target_shapes(trainer, batch)]
    else:
        g = torch.Generator().manual_seed(seed)
        data = torch.randn(shape, generator=g).to(dev)
        targets = [torch.randint(0, max(num_classes, 2), s, generator=g, dtype=torch.int16).to(dev)
                   for s in target_shapes(trainer, batch)]
    return {"data": data, "target": targets if trainer.enable_deep_supervision else targets[0]}


__all__: Sequence[str] = ["NNUNET", "build_network", "input_channels", "step_trainer",
                          "synthetic_batch", "target_shapes", "trainer_class", "trainer_of"]
