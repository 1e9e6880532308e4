"""A registry of architectures: one decorator registers a builder under a name.

Listing (``nnunet-ext trainers``), building (trainers, ``nnunet-ext summary``, the benchmark)
and validation all go through it, so adding a network touches only its own module plus one
import line in :mod:`nnunet_ext.architectures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from nnunet_ext.architectures.plans import PlanSpec, Shape

Builder = Callable[[PlanSpec, int, int, bool], nn.Module]


@dataclass(frozen=True)
class ArchEntry:
    """A registered architecture.

    Attributes:
        name: registry key (``unetr_pp``).
        builder: ``builder(spec, input_channels, num_classes, deep_supervision) -> nn.Module``.
        trainer: name of the nnU-Net trainer that trains it.
        title: human name of the network.
        paper: short citation.
        divisor: ``divisor(spec) -> (dz, dy, dx)``: what the patch must be divisible by; defaults
            to the plan's total stride.
    """

    name: str
    builder: Builder
    trainer: str
    title: str
    paper: str
    divisor: Callable[[PlanSpec], Shape] | None = None

    def required_divisor(self, spec: PlanSpec) -> Shape:
        return tuple(self.divisor(spec)) if self.divisor else spec.total_stride


_REGISTRY: dict[str, ArchEntry] = {}


def register_architecture(name: str, *, trainer: str, title: str, paper: str,
                          divisor: Callable[[PlanSpec], Shape] | None = None):
    """Decorator: register ``builder(spec, input_channels, num_classes, deep_supervision)``."""

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture '{name}' is registered twice")
        _REGISTRY[name] = ArchEntry(name, builder, trainer, title, paper, divisor)
        return builder

    return deco


def available_architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> ArchEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture '{name}'; known: {', '.join(available_architectures())}") from None


def build_network(name: str, spec: PlanSpec, input_channels: int, num_classes: int,
                  deep_supervision: bool = True) -> nn.Module:
    """Validate ``spec`` for architecture ``name`` and build it.

    Raises:
        PlanError: the patch is not divisible by the network's total stride (message names the
            axis and valid sizes).
        KeyError: unknown architecture (message lists the known ones).
    """
    entry = get_architecture(name)
    spec.check_divisible(entry.required_divisor(spec), entry.title)
    return entry.builder(spec, int(input_channels), int(num_classes), bool(deep_supervision))
