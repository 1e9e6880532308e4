"""Weights for formula tests: every parameter non-trivial, so a reference written with plain torch ops
cannot agree with a module by accident (the default init has ones, zeros and 1e-6 scales)."""

import torch
from torch import nn


def randomise(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Vectors (biases, norm affines, layer scales) ~ N(1, std), other parameters ~ N(0, std); in place."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(1.0 if p.dim() == 1 else 0.0, std)
    return module
