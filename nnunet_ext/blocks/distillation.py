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


def attention_map(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """A(F) = sum_c |F_c|, flattened and L2-normalised per sample: (B, C, *S) -> (B, prod(S)), in
    float32 (also under autocast)."""
    return F.normalize(features.float().abs().sum(dim=1).flatten(1), p=2, dim=1, eps=eps)


def self_distillation_loss(local_features: Sequence[torch.Tensor],
                           fused_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_sd = mean_batch sum_i || A(F_i) - A(O_i) ||_2 (a scalar, float32).

    ``local_features`` F_i (B, C_i, *S_i) and ``fused_features`` O_i (B, C'_i, *S_i) pair up level
    by level; the channel counts may differ, the batch and spatial sizes may not.
    """
    if len(local_features) != len(fused_features) or not local_features:
        raise ValueError(f"self_distillation_loss: local_features and fused_features need the same number of "
                         f"levels (at least one), got {len(local_features)} and {len(fused_features)}")
    total = None
    for i, (f, o) in enumerate(zip(local_features, fused_features)):
        if f.shape[0] != o.shape[0] or f.shape[2:] != o.shape[2:]:
            raise ValueError(f"self_distillation_loss: level {i}: fused_features must have the batch and spatial "
                             f"size of local_features {[f.shape[0], *f.shape[2:]]}, got {[o.shape[0], *o.shape[2:]]}")
        d = torch.linalg.vector_norm(attention_map(f) - attention_map(o), ord=2, dim=1)  # (B,)
        total = d if total is None else total + d
    return total.mean()
