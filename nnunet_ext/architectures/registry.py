"""A registry of architectures: one decorator registers a builder under a name.

Listing (``nnunet-ext trainers``), building (trainers, ``nnunet-ext summary``, the benchmark)
and plan checking all go through it, so adding a network touches only its own module plus one
import line in :mod:`nnunet_ext.architectures`. A registration names the network's number of
down-samplings and its stride rule (:mod:`.plans` explains the rules); the registry derives the
strides from a :class:`~.plans.PlanSpec` and hands them to the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from nnunet_ext.architectures.plans import PlanError, PlanSpec, Shape, Strides, stride_product

#: ``builder(spec, strides, input_channels, num_classes, deep_supervision, **network_kwargs) -> network``
#: (``network_kwargs``: constructor arguments a trainer variant overrides, e.g. an ablation)
Builder = Callable[..., nn.Module]
#: ``rule(spec, downsamplings) -> strides``, one per down-sampling (see :mod:`.plans`)
StrideRule = Callable[[PlanSpec, int | None], Strides]


@dataclass(frozen=True)
class ArchEntry:
    """A registered architecture.

    Attributes:
        name: registry key (``unetr_pp``).
        make: the registered builder (:data:`Builder`); :meth:`builder` calls it with the strides.
        trainer: name of the nnU-Net trainer that trains it.
        title: human name of the network.
        paper: short citation.
        downsamplings: how many down-samplings the network has (None: as many as the plan).
        stride_rule: how the plan's total stride is spread over them.
        paper_network: a published network (benchmarked, gpu-checked, planned in the example, run by
            the paper-network tests); False for helpers such as the spine's small U-Net.
        uses_scan: its blocks call the selective scan (:func:`nnunet_ext.ops.selective_scan`).
    """

    name: str
    make: Builder
    trainer: str
    title: str
    paper: str
    downsamplings: int | None
    stride_rule: StrideRule
    paper_network: bool = True
    uses_scan: bool = False

    def strides(self, spec: PlanSpec) -> Strides:
        """The network's down-sampling strides for ``spec``, shallowest first."""
        return self.stride_rule(spec, self.downsamplings)

    def divisor(self, spec: PlanSpec) -> Shape:
        """What the patch must be divisible by: the network's total stride."""
        return stride_product(self.strides(spec))

    def builder(self, spec: PlanSpec, input_channels: int, num_classes: int,
                deep_supervision: bool = True, **network_kwargs) -> nn.Module:
        """Build the network for ``spec`` without checking it (:func:`check_plan` and
        :func:`build_network` check first); ``network_kwargs`` go to the network's constructor."""
        return self.make(spec, self.strides(spec), int(input_channels), int(num_classes), bool(deep_supervision),
                         **network_kwargs)

    def check(self, spec: PlanSpec) -> None:
        """Raise :class:`PlanError` (naming the axis and valid sizes) if the patch is not divisible
        by the network's total stride."""
        spec.check_divisible(self.divisor(spec), self.title)


_REGISTRY: dict[str, ArchEntry] = {}


def register_architecture(name: str, *, trainer: str, title: str, paper: str, downsamplings: int | None,
                          stride_rule: StrideRule, paper_network: bool = True, uses_scan: bool = False):
    """Decorator: register a network class (built by its ``from_plan``) or a function
    ``builder(spec, strides, input_channels, num_classes, deep_supervision)``; ``strides`` are
    ``stride_rule(spec, downsamplings)``. ``trainer`` names the nnU-Net trainer class that trains it
    (defined in :mod:`nnunet_ext.trainers.networks`); the flags are :class:`ArchEntry`'s."""

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture '{name}' is registered twice")
        make = builder.from_plan if isinstance(builder, type) else builder
        if any(e.trainer == trainer for e in _REGISTRY.values()):
            raise ValueError(f"trainer '{trainer}' is registered for two architectures")
        _REGISTRY[name] = ArchEntry(name, make, trainer, title, paper, downsamplings, stride_rule,
                                    bool(paper_network), bool(uses_scan))
        return builder

    return deco


def available_architectures(*, paper_network: bool | None = None, uses_scan: bool | None = None) -> list[str]:
    """Registered names, sorted; a flag given keeps only the entries with that value of it."""
    return sorted(n for n, e in _REGISTRY.items()
                  if (paper_network is None or e.paper_network == paper_network)
                  and (uses_scan is None or e.uses_scan == uses_scan))


def architecture_of_trainer(trainer: str) -> str | None:
    """The registered architecture that trainer class name ``trainer`` trains, or None."""
    return next((n for n, e in _REGISTRY.items() if e.trainer == trainer), None)


def get_architecture(name: str) -> ArchEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture '{name}'; known: {', '.join(available_architectures())}") from None


def check_plan(name: str, configuration_manager, plans_manager=None, configuration: str | None = None) -> PlanSpec:
    """The :class:`PlanSpec` of an nnU-Net configuration, checked once for architecture ``name``.

    Raises:
        PlanError: a 2D configuration (the message names the plans' 3D configurations), or a patch
            the network's total stride does not divide (the message names the axis and valid sizes).
    """
    entry = get_architecture(name)
    cm = configuration_manager
    patch = list(cm.patch_size)
    if len(patch) != 3:
        label = configuration or cm.configuration.get("data_identifier", "this configuration")
        options = [c for c in (plans_manager.available_configurations if plans_manager else ())
                   if len(plans_manager.get_configuration(c).patch_size) == 3]
        raise PlanError(
            f"{entry.trainer} trains a 3D network ({entry.title}), but configuration '{label}' is 2D (patch "
            f"{patch}). Use a 3D configuration of these plans: "
            f"{', '.join(options or ['3d_fullres (run nnUNetv2_plan_and_preprocess -c 3d_fullres)'])}.")
    spec = PlanSpec.from_configuration(cm, configuration)
    entry.check(spec)
    return spec


def build_network(name: str, spec: PlanSpec, input_channels: int, num_classes: int,
                  deep_supervision: bool = True, **network_kwargs) -> nn.Module:
    """Check ``spec`` for architecture ``name`` and build it (``network_kwargs`` go to its constructor).

    Raises:
        PlanError: the patch is not divisible by the network's total stride (message names the
            axis and valid sizes).
        KeyError: unknown architecture (message lists the known ones).
    """
    entry = get_architecture(name)
    entry.check(spec)
    return entry.builder(spec, input_channels, num_classes, deep_supervision, **network_kwargs)
