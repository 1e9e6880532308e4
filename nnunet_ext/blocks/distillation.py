"""MISSU's self-distillation loss between local features and their MSF-fused counterparts.

Wang et al., "MISSU: 3D Medical Image Segmentation via Self-distilling TransUNet", IEEE TMI 2023
(self-distillation loss; attention maps as in attention transfer, Zagoruyko & Komodakis, ICLR 2017):

- attention map A(F) = sum_c |F_c|, flattened and L2-normalised per sample: (B, C, *S) -> (B, prod(S));
- L_sd = sum_i || A(F_i) - A(O_i) ||_2 over the levels, averaged over the batch.

No side is detached: the paper optimises MSF's parameters through this loss (a detached teacher
would leave MSF untrained), so gradients reach both the encoder (F_i) and MSF (O_i).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def channel_energy(features: torch.Tensor) -> torch.Tensor:
    """sum_c |F_c|: (B, C, *S) -> (B, 1, *S), in float32 (also under autocast)."""
    return features.float().abs().sum(dim=1, keepdim=True)


def attention_map(features: torch.Tensor, size: Sequence[int] | None = None, eps: float = 1e-12) -> torch.Tensor:
    """A(F): (B, C, *S) -> (B, prod(S')) with unit L2 norm per sample.

    ``size``: resize the (B, 1, *S) energy map to S' with (tri)linear interpolation before
    flattening (used where the two sides of the loss differ in size); default S' = S.
    """
    energy = channel_energy(features)
    if size is not None and tuple(energy.shape[2:]) != tuple(size):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        energy = F.interpolate(energy, size=tuple(size), mode=mode, align_corners=False)
    return F.normalize(energy.flatten(1), p=2, dim=1, eps=eps)


def self_distillation_loss(local_features: Sequence[torch.Tensor],
                           fused_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_sd = mean_batch sum_i || A(F_i) - A(O_i) ||_2 (a scalar, float32).

    ``local_features`` F_i and ``fused_features`` O_i pair up level by level; where a pair differs in
    spatial size, O_i's energy map is resized to F_i's.
    """
    assert len(local_features) == len(fused_features) > 0, \
        f"need the same number of local and fused levels, got {len(local_features)} and {len(fused_features)}"
    total = None
    for f, o in zip(local_features, fused_features):
        a_f = attention_map(f)
        a_o = attention_map(o, size=f.shape[2:])
        d = torch.linalg.vector_norm(a_f - a_o, ord=2, dim=1)  # (B,)
        total = d if total is None else total + d
    return total.mean()
