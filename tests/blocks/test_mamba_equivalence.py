"""The overhead-free ToM / Mamba layer computes what the first formulation computed: the same
weights give the same outputs and gradients (float32 rounding), for the blocks and for whole
SegResMamba / SegMamba networks (whose MambaLayers are swapped for the frozen formulation)."""

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.blocks.mamba import MambaLayer, SelectiveSSM, TriOrientedMamba, from_order, to_order
from nnunet_ext.ops import causal_conv1d, selective_scan


# ---------------------------------------------------------------------------- frozen formulation
def _frozen_ssm(ssm: SelectiveSSM, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x, z (B, E, L) -> (B, E, L): the first SelectiveSSM.forward (contiguous (B, N, L) B and C)."""
    x = causal_conv1d(x, ssm.conv1d.weight.flatten(1), ssm.conv1d.bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), ssm.x_proj.weight)
    dt, b, c = torch.split(x_dbl, [ssm.dt_rank, ssm.d_state, ssm.d_state], dim=-1)
    delta = torch.matmul(ssm.dt_proj.weight, dt.transpose(1, 2))
    b = b.transpose(1, 2).contiguous()
    c = c.transpose(1, 2).contiguous()
    A = -torch.exp(ssm.A_log.float())
    return selective_scan(x, delta, A, b, c, ssm.D.float(), z=z, delta_bias=ssm.dt_proj.bias.float(),
                          delta_softplus=True)


def _frozen_tom_tokens(tom: TriOrientedMamba, tokens: torch.Tensor, shape) -> torch.Tensor:
    """tokens (B, L, C) -> (B, L, C): the first TriOrientedMamba on tokens."""
    xz = torch.matmul(tom.in_proj.weight, tokens.transpose(1, 2))
    y = None
    for d in tom.directions:
        x_d, z_d = to_order(xz, shape, d).chunk(2, dim=1)
        y_d = from_order(_frozen_ssm(tom.ssm[d], x_d, z_d), shape, d)
        y = y_d if y is None else y + y_d
    return tom.out_proj(y.transpose(1, 2))


def _frozen_layer_forward(layer: MambaLayer, x: torch.Tensor) -> torch.Tensor:
    """(B, C, Z, Y, X) -> (B, C, Z, Y, X): the first MambaLayer.forward."""
    tokens = layer.norm(x.flatten(2).transpose(1, 2))
    out = _frozen_tom_tokens(layer.mixer, tokens, x.shape[2:])
    return x + out.transpose(1, 2).reshape(x.shape)


def _outputs_and_grads(module, x, forward):
    x = x.clone().requires_grad_()
    out = forward(module, x)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outs)]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params])
    return outs, grads


def _assert_same(a, b):
    outs_a, grads_a = a
    outs_b, grads_b = b
    for oa, ob in zip(outs_a, outs_b, strict=True):
        torch.testing.assert_close(oa, ob, rtol=1e-4, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4, 2)])
def test_mamba_layer_matches_frozen_formulation(shape):
    torch.manual_seed(0)
    layer = MambaLayer(8, d_state=4)
    x = torch.randn(2, 8, *shape)
    _assert_same(_outputs_and_grads(layer, x, lambda m, t: m(t)),
                 _outputs_and_grads(layer, x, _frozen_layer_forward))


def test_tom_forward_and_tokens_match_frozen_formulation():
    torch.manual_seed(1)
    tom = TriOrientedMamba(8, d_state=4)
    x = torch.randn(2, 8, 4, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)
    frozen = _frozen_tom_tokens(tom, tokens, x.shape[2:])
    torch.testing.assert_close(tom.mix_channels_first(tokens, x.shape[2:]).transpose(1, 2), frozen,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tom(x), frozen.transpose(1, 2).reshape(x.shape), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- whole networks
def _network(name):
    from nnunet_ext.architectures.segmamba import SegMamba
    from nnunet_ext.architectures.segresmamba import SegResMamba

    if name == "segresmamba":
        return SegResMamba(1, 3, widths=(8, 16, 16, 16), depths=(1, 1, 1, 2), d_state=4), (2, 1, 16, 16, 16)
    return SegMamba(1, 3, widths=(8, 8, 16, 16), depths=(1, 1, 1, 1), hidden_size=16, d_state=4), (1, 1, 32, 32, 32)


@pytest.mark.parametrize("name", ["segresmamba", "segmamba"])
def test_network_matches_frozen_mamba_layers(name, monkeypatch):
    """The same state_dict run through the network as it is, and with every MambaLayer replaced by
    the frozen formulation: same deep-supervision outputs and gradients."""
    torch.manual_seed(2)
    net, shape = _network(name)
    net.train()
    x = torch.randn(shape)
    ours = _outputs_and_grads(net, x, lambda m, t: m(t))
    monkeypatch.setattr(MambaLayer, "forward", _frozen_layer_forward)
    assert len(ours[0]) > 1
    _assert_same(ours, _outputs_and_grads(net, x, lambda m, t: m(t)))
