"""Mamba blocks: the selective SSM core, tri-oriented Mamba (ToM) and the residual Mamba layer
used by SegMamba and SegResMamba.

Shapes (E = expand * C, N = d_state, L = Z * Y * X tokens):

- :class:`SelectiveSSM`: x, z (B, E, L) -> y (B, E, L): causal depthwise conv1d -> SiLU ->
  x_proj -> dt_proj -> selective scan with the gate SiLU(z) (one scan direction).
- :class:`TriOrientedMamba`: (B, C, Z, Y, X) -> (B, C, Z, Y, X) (SegMamba, Xing et al., MICCAI 2024,
  "ToM"): one shared in_proj/out_proj, one :class:`SelectiveSSM` per token order; with the single
  order ``("raster",)`` it is the Mamba block of Gu & Dao ("Mamba", arXiv 2312.00752, Fig. 3).
- :class:`MambaLayer`: (B, C, Z, Y, X) -> x + ToM(LayerNorm_C(x)).

The three token orders are derived from each feature map's own shape (see :func:`to_order`),
never from hard-coded slice counts. Every scan goes through :func:`nnunet_ext.ops.selective_scan`
and every short convolution through :func:`nnunet_ext.ops.causal_conv1d`, which pick the CUDA
kernels or our PyTorch code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.ops import causal_conv1d, selective_scan

#: token orders of ToM: forward raster (Z, Y, X flattened, X fastest), the same reversed, and
#: inter-slice (the depth index Z fastest: the tokens of one in-plane position are neighbours)
DIRECTIONS = ("raster", "reversed", "inter_slice")


# ---------------------------------------------------------------------------- token orders
def to_order(t: torch.Tensor, spatial_shape: Sequence[int], direction: str) -> torch.Tensor:
    """Reorder the last axis of ``t`` (..., L), given in raster order of ``spatial_shape`` (Z, Y, X),
    into ``direction``'s token order. Returns a new (..., L) tensor."""
    z, y, x = (int(s) for s in spatial_shape)
    if direction == "raster":
        return t
    if direction == "reversed":
        return t.flip(-1)
    if direction == "inter_slice":
        # (.., Z, Y*X) -> (.., Y*X, Z): position (y, x) outer, depth z inner
        return t.unflatten(-1, (z, y * x)).transpose(-1, -2).flatten(-2)
    raise ValueError(f"unknown token order '{direction}'; known: {', '.join(DIRECTIONS)}")


def from_order(t: torch.Tensor, spatial_shape: Sequence[int], direction: str) -> torch.Tensor:
    """Inverse of :func:`to_order`: (..., L) in ``direction``'s order -> (..., L) in raster order."""
    z, y, x = (int(s) for s in spatial_shape)
    if direction in ("raster", "reversed"):
        return to_order(t, spatial_shape, direction)  # both are involutions
    if direction == "inter_slice":
        return t.unflatten(-1, (y * x, z)).transpose(-1, -2).flatten(-2)
    raise ValueError(f"unknown token order '{direction}'; known: {', '.join(DIRECTIONS)}")


# ---------------------------------------------------------------------------- the SSM core
class SelectiveSSM(nn.Module):
    """One scan direction of a Mamba block (everything between in_proj and out_proj).

    ``forward(x, z)``: x, z (B, E, L) -> y (B, E, L), with
    x' = SiLU(causal_conv1d(x)); (dt, B, C) = x_proj(x'); delta = dt_proj.weight @ dt;
    y = selective_scan(x', delta, A = -exp(A_log), B, C, D, z, delta_bias = dt_proj.bias,
    delta_softplus=True) = scan(x') * SiLU(z).

    Initialisation as in Mamba's reference module (arXiv 2312.00752; ``mamba_simple.Mamba``): A_log = log(1..N) per
    channel (S4D-real), D = 1, dt_proj bias = softplus^-1(dt) with dt log-uniform in
    [dt_min, dt_max] (floored at ``dt_init_floor``), dt_proj weight uniform(+-dt_rank^-0.5 * dt_scale).
    """

    def __init__(self, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int = 1,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        # depthwise causal conv; its weight (E, 1, W) is passed as (E, W) to causal_conv1d
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.reset_ssm_parameters(dt_min, dt_max, dt_scale, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_scale: float = 1.0,
                             dt_init_floor: float = 1e-4) -> None:
        """Mamba's initialisation of dt_proj, A_log and D (see the class docstring)."""
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dev = self.dt_proj.bias.device
        log_dt = torch.rand(self.d_inner, device=dev) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=dev)).expand(
            self.d_inner, -1))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        x = causal_conv1d(x, self.conv1d.weight.flatten(1), self.conv1d.bias, activation="silu")
        x_dbl = F.linear(x.transpose(1, 2), self.x_proj.weight)  # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(self.dt_proj.weight, dt.transpose(1, 2))  # (B, E, L), L contiguous
        # (B, N, L) views of the tokens-major (B, L, N) columns: every scan back-end reads B and C
        # tokens-major (or copies them itself), so a contiguous (B, N, L) copy here would be undone
        b = b.transpose(1, 2)
        c = c.transpose(1, 2)
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # the scan's compute dtype
        A = -torch.exp(self.A_log.to(ct))  # (E, N)
        return selective_scan(x, delta, A, b, c, self.D.to(ct), z=z, delta_bias=self.dt_proj.bias.to(ct),
                              delta_softplus=True)


def _dt_rank(d_model: int, dt_rank: int | str) -> int:
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def _project_in(in_proj: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, C) -> in_proj(tokens) as (B, 2E, L), contiguous along L (the layout the
    scan and conv kernels want, without a transposed copy)."""
    xz = torch.matmul(in_proj.weight, tokens.transpose(1, 2))
    return xz if in_proj.bias is None else xz + in_proj.bias[:, None].to(xz.dtype)


def _project_out(out_proj: nn.Linear, y: torch.Tensor) -> torch.Tensor:
    """y (B, E, L) -> out_proj applied per token, as (B, C, L) contiguous (the channels-first
    layout of the feature map, so no transposed copy is needed to reshape it to (B, C, Z, Y, X))."""
    out = torch.matmul(out_proj.weight, y)
    return out if out_proj.bias is None else out + out_proj.bias[:, None].to(out.dtype)


# ---------------------------------------------------------------------------- mixers
class TriOrientedMamba(nn.Module):
    """ToM (SegMamba, Xing et al., MICCAI 2024): (B, C, Z, Y, X) -> (B, C, Z, Y, X).

    The feature map is flattened to tokens in three orders (:data:`DIRECTIONS`); a shared in_proj
    (C -> 2E) feeds one :class:`SelectiveSSM` per order (own conv1d, x_proj, dt_proj, A_log, D, as
    in the public code); each result is mapped back to raster order, the three are summed, and a
    shared out_proj (E -> C) follows. The orders come from the input's own (Z, Y, X).
    """

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", directions: Sequence[str] = DIRECTIONS,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False):
        super().__init__()
        for d in directions:
            if d not in DIRECTIONS:
                raise ValueError(f"unknown token order '{d}'; known: {', '.join(DIRECTIONS)}")
        self.channels, self.d_inner = channels, int(expand * channels)
        self.directions = tuple(directions)
        self.in_proj = nn.Linear(channels, 2 * self.d_inner, bias=bias)
        self.ssm = nn.ModuleDict({
            d: SelectiveSSM(self.d_inner, d_state, d_conv, _dt_rank(channels, dt_rank), dt_min, dt_max,
                            dt_init_floor=dt_init_floor, conv_bias=conv_bias)
            for d in self.directions})
        self.out_proj = nn.Linear(self.d_inner, channels, bias=bias)

    def mix_channels_first(self, tokens: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        """tokens (B, L, C) in raster order of ``spatial_shape`` (Z, Y, X) -> (B, C, L) raster.

        The shared in_proj runs once on the raster tokens; only its (B, 2E, L) output is reordered
        per direction (one copy each for ``reversed`` and ``inter_slice``), and the sum of the
        three (B, E, L) results, back in raster order, goes through the shared out_proj once.
        """
        xz = _project_in(self.in_proj, tokens)  # (B, 2E, L)
        y = None
        for d in self.directions:
            x_d, z_d = to_order(xz, spatial_shape, d).chunk(2, dim=1)
            y_d = from_order(self.ssm[d](x_d, z_d), spatial_shape, d)
            y = y_d if y is None else y + y_d
        return _project_out(self.out_proj, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mix_channels_first(x.flatten(2).transpose(1, 2), x.shape[2:])  # (B, C, L)
        return out.view(x.shape)


class MambaLayer(nn.Module):
    """Pre-norm residual ToM: (B, C, Z, Y, X) -> x + ToM(LayerNorm(x)), LayerNorm over channels
    (SegMamba, Xing et al., MICCAI 2024; the public code's ``MambaLayer``)."""

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mixer = TriOrientedMamba(channels, d_state, d_conv, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, L, C)
        out = self.mixer.mix_channels_first(tokens, x.shape[2:])  # (B, C, L)
        return x + out.view(x.shape)


__all__ = ["DIRECTIONS", "MambaLayer", "SelectiveSSM", "TriOrientedMamba", "from_order", "to_order"]
