"""Mamba blocks: the SSM core, ToM token orders, the Mamba block (ToM with one order) and the
residual Mamba layer; the hand-written checks use the sequential reference scan."""

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.blocks import mamba
from nnunet_ext.blocks.mamba import DIRECTIONS, MambaLayer, SelectiveSSM, TriOrientedMamba, from_order, to_order
from nnunet_ext.ops import ENV_VAR, available_backends
from nnunet_ext.ops.reference import selective_scan_sequential
from tests.ops.precision import assert_f32_close, assert_f64_close

ODD_SHAPES = [(3, 5, 7), (1, 1, 1), (2, 3, 1), (5, 1, 4), (7, 2, 3)]


def _copy_ssm(dst: SelectiveSSM, src: SelectiveSSM) -> None:
    dst.load_state_dict(src.state_dict())


def _assert_all_grads(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached {missing}"


# ---------------------------------------------------------------------------- token orders
def _permutation(shape, direction) -> torch.Tensor:
    """perm (L,) with ``to_order(t)[..., k] == t[..., perm[k]]``: the raster index of the k-th token."""
    return to_order(torch.arange(math.prod(shape)), shape, direction)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_orders_are_permutations_with_inverses(shape, direction):
    n = math.prod(shape)
    perm = _permutation(shape, direction)
    assert torch.equal(perm.sort().values, torch.arange(n))
    t = torch.randn(2, 3, n)
    ordered = to_order(t, shape, direction)
    assert torch.equal(ordered, t[..., perm])
    assert torch.equal(from_order(ordered, shape, direction), t)
    assert torch.equal(to_order(from_order(t, shape, direction), shape, direction), t)


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_orders_follow_their_definitions(shape):
    z, y, x = shape
    n = z * y * x
    assert torch.equal(_permutation(shape, "raster"), torch.arange(n))
    assert torch.equal(_permutation(shape, "reversed"), torch.arange(n).flip(0))
    # inter-slice: the depth index varies fastest -> token k = p * Z + d holds raster voxel (d, p)
    inter = _permutation(shape, "inter_slice")
    expected = torch.tensor([d * y * x + p for p in range(y * x) for d in range(z)])
    assert torch.equal(inter, expected)
    # same as flattening the map permuted to (Y, X, Z)
    vol = torch.arange(n).reshape(z, y, x)
    assert torch.equal(inter, vol.permute(1, 2, 0).flatten())


def test_unknown_order_raises():
    with pytest.raises(ValueError, match="unknown token order"):
        to_order(torch.zeros(4), (1, 2, 2), "diagonal")
    with pytest.raises(ValueError, match="unknown token order"):
        TriOrientedMamba(8, directions=("raster", "diagonal"))


# ------------------------------------------------------------ the Mamba block (ToM with one order)
def test_ssm_init_follows_mamba():
    ssm = SelectiveSSM(32, d_state=16, dt_rank=2)
    assert torch.allclose(ssm.A_log, torch.log(torch.arange(1, 17.0)).expand(32, -1))
    assert torch.equal(ssm.D, torch.ones(32))
    dt = F.softplus(ssm.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert ssm.dt_proj.weight.abs().max() <= 2 ** -0.5


def _mamba_by_hand(tom: TriOrientedMamba, direction: str, tokens: torch.Tensor) -> torch.Tensor:
    """The Mamba block (Gu & Dao, arXiv 2312.00752, Fig. 3) with ``tom``'s shared projections and
    its ``direction`` SSM, written out with torch ops and the sequential reference scan:
    tokens (B, L, C), in the order the SSM reads them -> (B, L, C)."""
    ssm = tom.ssm[direction]
    xz = tokens @ tom.in_proj.weight.T  # (B, L, 2E)
    x, z = xz.transpose(1, 2).chunk(2, dim=1)
    w = ssm.conv1d.weight.shape[-1]
    x = F.silu(F.conv1d(F.pad(x, (w - 1, 0)), ssm.conv1d.weight, ssm.conv1d.bias, groups=x.shape[1]))
    dbl = x.transpose(1, 2) @ ssm.x_proj.weight.T
    dt, b, c = dbl.split([ssm.dt_rank, ssm.d_state, ssm.d_state], dim=-1)
    delta = (dt @ ssm.dt_proj.weight.T).transpose(1, 2)
    y = selective_scan_sequential(x, delta, -torch.exp(ssm.A_log), b.transpose(1, 2), c.transpose(1, 2), ssm.D, z,
                                  delta_bias=ssm.dt_proj.bias, delta_softplus=True)
    return y.transpose(1, 2) @ tom.out_proj.weight.T


def _raster_mamba(channels: int = 8) -> TriOrientedMamba:
    """ToM with the single raster order: the plain Mamba block on a feature map."""
    return TriOrientedMamba(channels, d_state=4, directions=("raster",))


def test_one_raster_order_is_the_hand_written_mamba_block():
    m = _raster_mamba()
    x = torch.randn(2, 8, 1, 3, 5)
    out = m(x)
    assert out.shape == x.shape
    tokens = x.flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), _mamba_by_hand(m, "raster", tokens),
                               rtol=1e-4, atol=1e-5)


def test_mamba_block_is_causal_along_the_raster_order():
    m = _raster_mamba()
    x = torch.randn(1, 8, 1, 1, 12)
    changed = x.clone()
    changed[..., 7:] += 1.0
    a, b = m(x), m(changed)
    torch.testing.assert_close(a[..., :7], b[..., :7])
    assert not torch.allclose(a[..., 7:], b[..., 7:])


# ---------------------------------------------------------------------------- ToM
@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 4, 4), (1, 6, 2)])
def test_tom_preserves_shape(shape):
    tom = TriOrientedMamba(8, d_state=4)
    x = torch.randn(2, 8, *shape)
    assert tom(x).shape == x.shape


def test_tom_gradient_reaches_every_direction():
    tom = TriOrientedMamba(8, d_state=4)
    x = torch.randn(1, 8, 3, 5, 7, requires_grad=True)
    tom(x).square().sum().backward()
    _assert_all_grads(tom)
    assert set(tom.ssm.keys()) == set(DIRECTIONS)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _single(tom: TriOrientedMamba, direction: str) -> TriOrientedMamba:
    one = TriOrientedMamba(tom.channels, d_state=tom.ssm[direction].d_state, directions=(direction,))
    one.in_proj.load_state_dict(tom.in_proj.state_dict())
    one.out_proj.load_state_dict(tom.out_proj.state_dict())
    _copy_ssm(one.ssm[direction], tom.ssm[direction])
    return one


def test_tom_is_the_sum_of_three_mamba_blocks_in_their_orders():
    """Each direction = the hand-written Mamba block on the tokens in that order, mapped back (values)."""
    torch.manual_seed(1)
    tom = TriOrientedMamba(6, d_state=4)
    x = torch.randn(2, 6, 3, 5, 7)
    b, c, z, y, w = x.shape
    raster = x.flatten(2).transpose(1, 2)  # (B, L, C)
    expect = {
        "raster": _mamba_by_hand(tom, "raster", raster),
        "reversed": _mamba_by_hand(tom, "reversed", raster.flip(1)).flip(1),
        # inter-slice = raster order of the map permuted to (Y, X, Z), permuted back
        "inter_slice": _mamba_by_hand(tom, "inter_slice", x.permute(0, 1, 3, 4, 2).flatten(2).transpose(1, 2))
        .transpose(1, 2).reshape(b, c, y, w, z).permute(0, 1, 4, 2, 3).flatten(2).transpose(1, 2),
    }
    for d in DIRECTIONS:
        got = _single(tom, d)(x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(got, expect[d], rtol=1e-4, atol=1e-5, msg=f"direction {d}")
    # out_proj is linear without bias: ToM = sum of the three
    total = sum(expect.values())
    torch.testing.assert_close(tom(x).flatten(2).transpose(1, 2), total, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- residual layer
def test_mamba_layer_is_residual_and_shape_preserving():
    layer = MambaLayer(8, d_state=4)
    x = torch.randn(2, 8, 3, 5, 7)
    out = layer(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    torch.nn.init.zeros_(layer.mixer.out_proj.weight)
    torch.testing.assert_close(layer(x), x)


def test_mamba_layer_gradients_and_signature():
    layer = MambaLayer(channels=8, d_state=4, d_conv=3, expand=1)
    assert layer.mixer.d_inner == 8 and layer.mixer.ssm["raster"].conv1d.weight.shape[-1] == 3
    x = torch.randn(1, 8, 2, 3, 4, requires_grad=True)
    layer(x).sum().backward()
    _assert_all_grads(layer)


def test_mamba_layer_builds_and_runs_on_meta():
    with torch.device("meta"):
        layer = MambaLayer(16)
        out = layer(torch.zeros(2, 16, 3, 5, 7))
    assert out.shape == (2, 16, 3, 5, 7) and out.device.type == "meta"


# ---------------------------------------------------------------------------- back-ends agree, same weights
#: name -> (module factory, input shape, tokens L per sequence); C = 8, E = 16, N = 4
BLOCKS = {
    "mamba": (_raster_mamba, (2, 8, 2, 5, 5), 50),
    "tom": (lambda: TriOrientedMamba(8, d_state=4), (2, 8, 3, 5, 7), 105),
    "layer": (lambda: MambaLayer(8, d_state=4), (2, 8, 3, 5, 7), 105),
}


def use_scan(monkeypatch, backend: str) -> None:
    """Make the Mamba blocks scan with ``backend``: a back-end name (forced through the environment
    variable), or ``"reference"``: the sequential reference scan in place of the blocks' scan."""
    if backend == "reference":
        monkeypatch.setattr(mamba, "selective_scan", selective_scan_sequential)
    else:
        monkeypatch.setenv(ENV_VAR, backend)


def _block_outputs_and_grads(name, backend, dtype, monkeypatch):
    """Output and the gradient of the input and of every parameter under a fixed random loss, with
    the scan of ``backend`` (see :func:`use_scan`) and the block (fixed weights) cast to ``dtype``."""
    factory, shape, _ = BLOCKS[name]
    torch.manual_seed(3)
    block = factory().to(dtype)
    x = torch.randn(shape).to(dtype).requires_grad_()
    weight = torch.randn(shape).to(dtype)
    with monkeypatch.context() as m:
        use_scan(m, backend)
        out = block(x)
        grads = torch.autograd.grad((out * weight).sum(), [x, *block.parameters()])
    names = ["input", *(n for n, _ in block.named_parameters())]
    return {"out": out, **{f"d{n}": g for n, g in zip(names, grads)}}


@pytest.mark.parametrize("name", BLOCKS)
def test_block_float64_torch_backend_equals_reference(name, monkeypatch):
    ours = _block_outputs_and_grads(name, "torch", torch.float64, monkeypatch)
    truth = _block_outputs_and_grads(name, "reference", torch.float64, monkeypatch)
    assert ours.keys() == truth.keys()
    for k in truth:
        assert_f64_close(ours[k], truth[k], f"{name} {k}")


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("name", BLOCKS)
def test_block_float32_backends_match_float64_truth(name, backend, monkeypatch):
    """Every CPU back-end in float32 against the float64 block (the same float32 weights and input);
    tolerance from float32 accumulation over B*L tokens plus the largest fan-in (E) and N."""
    truth = _block_outputs_and_grads(name, "reference", torch.float64, monkeypatch)
    ours = _block_outputs_and_grads(name, backend, torch.float32, monkeypatch)
    _, shape, length = BLOCKS[name]
    n_ops = shape[0] * length + 16 + 4
    for k in truth:
        assert ours[k].dtype == torch.float32, k
        assert_f32_close(ours[k], truth[k], n_ops, f"{name} {backend} {k}")
