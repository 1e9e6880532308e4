"""Parameter and MAC counts of a network, and of a registered architecture at a plan's setting
(``nnunet-ext summary``; the ``params`` and ``macs`` columns of ``nnunet-ext benchmark``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.architectures import PlanSpec, build_network


def count_parameters(network: torch.nn.Module, inference: bool = False, trainable_only: bool = False) -> int:
    """Parameters of ``network``; ``inference`` leaves out its ``training_only_modules``."""
    skip = {id(p) for name in (getattr(network, "training_only_modules", ()) if inference else ())
            for p in network.get_submodule(name).parameters()}
    return sum(p.numel() for p in network.parameters()
               if id(p) not in skip and (p.requires_grad or not trainable_only))


def count_macs(network: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one eval-mode forward of a (B, C, Z, Y, X) input (on the network's device;
    on the meta device nothing is computed).

    Counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; MACs = FLOPs / 2);
    elementwise work (norms, activations, the selective-scan recurrence) is not counted, as in
    the papers' fvcore/ptflops figures.
    """
    was_training = network.training
    network.eval()
    x = torch.zeros(tuple(input_shape), device=next(network.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(x)
    network.train(was_training)
    return counter.get_total_flops() // 2


def summarize(arch: str, patch_size: Sequence[int], input_channels: int, num_classes: int,
              spacing: Sequence[float] = (1.0, 1.0, 1.0), deep_supervision: bool = False,
              device: str = "meta") -> dict:
    """Build ``arch`` for a plan of ``patch_size`` (nnU-Net's strides) and count it.

    Built on the meta device (no memory, no weights), so even 128^3 settings are instant.
    Returns ``{arch, patch_size, strides, params, params_trainable, params_inference, macs}``.
    """
    spec = PlanSpec.from_patch(patch_size, spacing)
    with torch.device(device):
        net = build_network(arch, spec, input_channels, num_classes, deep_supervision)
    return {
        "arch": arch,
        "patch_size": list(spec.patch_size),
        "strides": [list(s) for s in spec.strides],
        "params": count_parameters(net),
        "params_trainable": count_parameters(net, trainable_only=True),
        "params_inference": count_parameters(net, inference=True),
        "macs": count_macs(net, (1, input_channels, *spec.patch_size)),
    }
