"""Base class shared by every nnunet-ext network."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from torch import nn

from nnunet_ext.architectures.plans import Shape, stride_product


def scales_from_strides(strides_per_output: Sequence[Sequence[int]]) -> list[list[float]]:
    """Deep-supervision scales in nnU-Net's format from the cumulative stride of each output.

    ``strides_per_output[i]`` is the per-axis total stride of output ``i`` relative to the input
    (highest resolution first), e.g. ``[(1,1,1), (2,2,2), (4,4,4)] -> [[1,1,1], [.5,.5,.5], [.25,.25,.25]]``.
    """
    return [[float(v) for v in 1.0 / np.asarray(s, dtype=float)] for s in strides_per_output]


def check_lengths(network: str, widths: Sequence[int], **arguments: tuple[Sequence, int]) -> None:
    """Raise ValueError naming the first argument whose length is wrong: ``name=(value, expected length)``,
    lengths counted against the stages of ``widths``."""
    for name, (value, length) in arguments.items():
        if len(value) != length:
            raise ValueError(f"{network}: {name} must have {length} entries for {len(widths)} stages (widths "
                             f"{list(widths)}), got {[list(v) if isinstance(v, Sequence) else v for v in value]}")


def check_patch_divisible(network: str, patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> Shape:
    """The total stride (per-axis product of ``strides``); ValueError if ``patch_size`` is not divisible by it
    (a network whose token counts or grid follow from the patch needs whole feature maps)."""
    total = stride_product(strides)
    if any(p % t for p, t in zip(patch_size, total)):
        raise ValueError(f"{network}: patch_size {list(patch_size)} must be divisible by the total stride "
                         f"{list(total)} (the product of strides {[list(s) for s in strides]})")
    return total


class StagedEncoder(nn.Module):
    """A stem, then stages entered through down-samplings: ``forward(x)`` with x (B, C_in, Z, Y, X)
    returns ``[stages[0](stem(x)), stages[1](downsamples[0](.)), ...]``, highest resolution first.

    Subclasses build ``stem``, ``stages`` and ``downsamples`` (one fewer than stages).
    """

    stem: nn.Module
    downsamples: nn.ModuleList
    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stages[0](self.stem(x))
        skips = [h]
        for down, stage in zip(self.downsamples, self.stages[1:]):
            h = stage(down(h))
            skips.append(h)
        return skips


class ExtNetwork(AbstractDynamicNetworkArchitectures):
    """Conventions every nnunet-ext network follows (so the base trainer needs no special cases).

    - ``forward(x)`` with ``x`` of shape (B, C_in, Z, Y, X) returns logits (no softmax): with
      ``deep_supervision`` True a list of tensors, highest resolution first, the first of shape
      (B, num_classes, Z, Y, X); otherwise only that first tensor. The default is
      dynamic-network-architectures' U-Net shape, ``decoder(encoder(x), deep_supervision)``, with
      the decoder built from the encoder.
    - ``deep_supervision``: a plain attribute, set at construction and toggled by the trainer;
      ``forward`` reads it (the networks pass it to their
      :class:`~nnunet_ext.blocks.conv.SegmentationHeads`).
    - ``deep_supervision_scales``: nnU-Net-format scales of the outputs (see
      :func:`scales_from_strides`); its length is the number of deep-supervision outputs.
    - ``training_only_modules``: names of sub-modules that exist for training only (MISSU's MSF
      blocks); they stay in the state dict but are not counted as inference parameters.
    - ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` (every conv that reads the input) and
      ``key_to_lpe`` as in dynamic-network-architectures, for tools that transfer weights or swap
      input channels; the defaults fit a network with ``self.encoder.stem.conv``.
    - Constructor ``(input_channels, num_classes, [patch_size,] strides, deep_supervision=...)``:
      :meth:`from_plan` builds it from a plan (``patch_size`` only where ``patch_sized``: position
      embeddings or token projections sized by the patch), so a registered network class needs no
      builder function of its own.
    """

    training_only_modules: tuple[str, ...] = ()
    #: the constructor takes the patch size (after ``num_classes``)
    patch_sized: bool = False

    @classmethod
    def from_plan(cls, spec, strides, input_channels: int, num_classes: int, deep_supervision: bool,
                  **network_kwargs):
        """The network for ``spec`` with the registry's ``strides`` (the registry's builder);
        ``network_kwargs`` override the constructor's other defaults."""
        sizes = (spec.patch_size,) if cls.patch_sized else ()
        return cls(input_channels, num_classes, *sizes, strides, deep_supervision=deep_supervision, **network_kwargs)

    def __init__(self, deep_supervision: bool = True, *, key_to_encoder: str = "encoder",
                 key_to_stem: str = "encoder.stem", keys_to_in_proj: Sequence[str] = ("encoder.stem.conv",),
                 key_to_lpe: str | None = None):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        self.deep_supervision_scales: list[list[float]] = []
        self.key_to_encoder, self.key_to_stem = key_to_encoder, key_to_stem
        self.keys_to_in_proj, self.key_to_lpe = tuple(keys_to_in_proj), key_to_lpe

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x), self.deep_supervision)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net-style He init for convolutions (applied by the networks, not by the trainer)."""
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def initialize_convolutions(self, conv_init: str) -> None:
        """``"he"``: nnU-Net's He init (:meth:`initialize`) on every convolution; ``"pytorch"``: leave
        PyTorch's default. Other layers keep their own init either way."""
        if conv_init not in ("pytorch", "he"):
            raise ValueError(f"{type(self).__name__}: conv_init must be 'pytorch' or 'he', got '{conv_init}'")
        if conv_init == "he":
            self.apply(self.initialize)
