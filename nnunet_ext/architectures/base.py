"""Base class shared by every nnunet-ext network."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from torch import nn


def scales_from_strides(strides_per_output: Sequence[Sequence[int]]) -> list[list[float]]:
    """Deep-supervision scales in nnU-Net's format from the cumulative stride of each output.

    ``strides_per_output[i]`` is the per-axis total stride of output ``i`` relative to the input
    (highest resolution first), e.g. ``[(1,1,1), (2,2,2), (4,4,4)] -> [[1,1,1], [.5,.5,.5], [.25,.25,.25]]``.
    """
    return [[float(v) for v in 1.0 / np.asarray(s, dtype=float)] for s in strides_per_output]


class ExtNetwork(AbstractDynamicNetworkArchitectures):
    """Conventions every nnunet-ext network follows (so the base trainer needs no special cases).

    - ``forward(x)`` with ``x`` of shape (B, C_in, Z, Y, X) returns logits (no softmax):
      with ``deep_supervision`` True a list of tensors, highest resolution first, the first of
      shape (B, num_classes, Z, Y, X); otherwise only that first tensor.
    - ``deep_supervision`` is a plain settable attribute (the trainer toggles it).
    - ``deep_supervision_scales``: nnU-Net-format scales of the outputs (see
      :func:`scales_from_strides`); its length is the number of deep-supervision outputs.
    - ``training_only_modules``: names of sub-modules that exist for training only (MISSU's MSF
      blocks); they stay in the state dict but are not counted as inference parameters.
    - ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` (and ``key_to_lpe``) as in
      dynamic-network-architectures, for tools that transfer weights or swap input channels.
    """

    training_only_modules: tuple[str, ...] = ()
    deep_supervision: bool
    deep_supervision_scales: list[list[float]]

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net-style He init for convolutions (applied by the builders, not by the trainer)."""
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class EncoderDecoderNetwork(ExtNetwork):
    """An :class:`ExtNetwork` shaped like dynamic-network-architectures' U-Nets: ``self.encoder``
    returns the skips, ``self.decoder`` (built from the encoder) turns them into logits and owns the
    ``deep_supervision`` flag. ``forward(x) = decoder(encoder(x))``."""

    encoder: nn.Module
    decoder: nn.Module

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    def forward(self, x):
        return self.decoder(self.encoder(x))
