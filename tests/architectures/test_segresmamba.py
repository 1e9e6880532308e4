"""SegResMamba sized from nnU-Net's plans: divisor, shapes, gradients, the efficiency claim."""

import pytest
import torch
from torch import nn

from nnunet_ext.architectures import PlanError, PlanSpec, available_architectures, build_network, get_architecture
from nnunet_ext.architectures.segresmamba import ConvMambaBlock, SegResMamba
from nnunet_ext.bench.counts import summarize
from nnunet_ext.blocks.mamba import DIRECTIONS, MambaLayer
from tests.plans import plans_manager

ANISO = PlanSpec.from_patch((20, 160, 160), spacing=(5.0, 0.8, 0.8))


def _expected_shapes(net, batch, num_classes, patch):
    return [(batch, num_classes, *[round(p * f) for p, f in zip(patch, s)]) for s in net.deep_supervision_scales]


# ------------------------------------------------------------------ plan -> strides
def test_a_deep_plan_needs_only_the_networks_divisor():
    # a plan of total stride 32 needs only 2^3 per axis for SegResMamba's three down-samplings
    deep = PlanSpec((40, 48, 40), ((1, 1, 1),) + ((2, 2, 2),) * 5)
    assert get_architecture("segresmamba").divisor(deep) == (8, 8, 8)
    with torch.device("meta"):
        build_network("segresmamba", deep, 1, 2)
    with pytest.raises(PlanError, match="SegResMamba.*axis 0"):
        build_network("segresmamba", PlanSpec((44, 40, 40), deep.strides), 1, 2)


# ------------------------------------------------------------------ shapes from specs (meta device)
@pytest.mark.parametrize("spec, cin, k", [
    (PlanSpec.from_patch((128, 128, 128)), 4, 4),
    (ANISO, 1, 3),
    (PlanSpec.from_patch((48, 64, 80)), 3, 4),
])
@pytest.mark.parametrize("ds", [True, False])
def test_builder_output_shapes_on_meta(spec, cin, k, ds):
    with torch.device("meta"):
        net = build_network("segresmamba", spec, cin, k, ds)
        out = net(torch.zeros(2, cin, *spec.patch_size))
    assert net.deep_supervision_scales[0] == [1.0, 1.0, 1.0] and len(net.deep_supervision_scales) == 3
    expected = _expected_shapes(net, 2, k, spec.patch_size)
    if ds:
        assert [tuple(o.shape) for o in out] == expected
    else:
        assert tuple(out.shape) == expected[0]


def test_mamba_layers_at_the_three_coarser_levels():
    """Our choice (mamba_levels (1, 2, 3)) with SegResNet's blocks (1, 2, 2, 4): 2 + 2 + 4 = 8 ToM layers,
    each after a residual conv block."""
    with torch.device("meta"):
        net = build_network("segresmamba", PlanSpec.from_patch((128, 128, 128)), 4, 4)
    assert sum(isinstance(m, MambaLayer) for m in net.modules()) == 8
    assert sum(isinstance(m, ConvMambaBlock) for m in net.modules()) == 8


# ------------------------------------------------------------------ real forward / backward (tiny)
def _tiny(cin=1, k=2, strides=((2, 2, 2),) * 3, ds=True, **kw):
    kw = dict(widths=(8, 16, 32, 64), depths=(1, 1, 1, 2), d_state=4) | kw
    return SegResMamba(cin, k, strides=strides, deep_supervision=ds, **kw)


@pytest.mark.parametrize("cin, k, patch, strides, kw", [
    (1, 2, (16, 16, 16), ((2, 2, 2),) * 3, {}),
    (1, 3, (4, 32, 32), ((1, 2, 2), (2, 2, 2), (2, 2, 2)), {}),  # anisotropic: (4, 32, 32) like ANISO
    (3, 4, (8, 16, 24), ((2, 2, 2),) * 3, {"upsample_mode": "deconv"}),
])
def test_forward_shapes_and_gradients_reach_every_parameter(cin, k, patch, strides, kw):
    net = _tiny(cin, k, strides, **kw)
    out = net(torch.randn(2, cin, *patch))
    assert [tuple(o.shape) for o in out] == _expected_shapes(net, 2, k, patch)
    sum((o * torch.randn_like(o)).sum() for o in out).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    names = [n for n, _ in net.named_parameters()]
    for d in DIRECTIONS:  # every ToM direction has its own SSM parameters, all trained
        assert any(f"ssm.{d}.A_log" in n for n in names) and any(f"ssm.{d}.x_proj" in n for n in names)


def test_deep_supervision_toggle_and_values_agree():
    net = _tiny().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        full = net(x)
        net.deep_supervision = False
        single = net(x)
    assert isinstance(full, list) and len(full) == 3 and torch.is_tensor(single)
    torch.testing.assert_close(single, full[0])
    assert full[1].shape[2:] == (8, 8, 8) and full[2].shape[2:] == (4, 4, 4)  # 16^3 / 2 and / 4


def test_mamba_levels_are_configurable():
    net = _tiny(mamba_levels=(0, 3))
    mixed = [any(isinstance(b, ConvMambaBlock) for b in s) for s in net.encoder.stages]
    assert mixed == [True, False, False, True]
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert out[0].shape == (1, 2, 16, 16, 16)
    assert not any(isinstance(m, MambaLayer) for m in _tiny(mamba_levels=()).modules())


def test_no_nan_in_50_bf16_autocast_iterations():
    net = _tiny(1, 3, depths=(1, 1, 1, 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)  # nnU-Net's optimizer
    # deepest map (3, 1, 1): torch 2.14's CPU bf16 conv3d backward intermittently returns non-finite
    # weight gradients when the depth axis is exactly 2 (any network; a 16^3 patch would hit it)
    x = torch.randn(1, 1, 24, 8, 8)
    y = (x > 0.5).long()[:, 0] + (x < -0.5).long()[:, 0]
    for _ in range(50):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
            loss = sum(nn.functional.cross_entropy(o.float(), nn.functional.interpolate(
                y[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()) for o in out)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)  # as nnU-Net's train_step
        opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


# ------------------------------------------------------------------ the efficiency claim (meta device)
def test_far_fewer_params_and_macs_than_segmamba_at_128():
    if "segmamba" not in available_architectures():
        pytest.skip("segmamba is not registered yet")
    # the paper's claim (networks.md): far fewer MACs than its transformer peers at 128^3
    ours = summarize("segresmamba", (128, 128, 128), 4, 4)
    theirs = summarize("segmamba", (128, 128, 128), 4, 4)
    assert ours["params"] < theirs["params"] / 2
    assert ours["macs"] < theirs["macs"] / 2


# ------------------------------------------------------------------ trainer
def test_trainer_builds_from_nnunet_plans():
    from nnunet_ext.trainers import SegResMambaTrainer

    pm = plans_manager((16, 64, 64), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)), (3.0, 0.8, 0.8))
    with torch.device("meta"):
        net = SegResMambaTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 2, 3,
                                                            enable_deep_supervision=False)
        out = net(torch.zeros(1, 2, 16, 64, 64))
    # plan total (4, 32, 32), deepest first and capped at 2^3 (plans.deepest_first_strides by hand)
    assert net.deep_supervision_scales == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    assert out.shape == (1, 3, 16, 64, 64) and net.deep_supervision is False


def _finest_up_and_skip_std(net, patch=(32, 32, 32)) -> tuple[float, float]:
    """Standard deviations of the finest decoder level's up-sampled path and of the skip it is added to."""
    x = torch.randn(2, 1, *patch)
    with torch.no_grad():
        skips = net.encoder(x)
        h = skips[-1]
        for up, stage, skip in zip(net.decoder.ups, net.decoder.stages, reversed(skips[:-1])):
            u = up(h)
            h = stage(u + skip)
    return u.std().item(), skip.std().item()


def test_default_init_starts_the_upsampled_path_and_the_skip_at_one_scale():
    torch.manual_seed(0)
    up, skip = _finest_up_and_skip_std(SegResMamba(1, 3, mamba_levels=()))
    assert 0.25 < up / skip < 2, (up, skip)
    # nnU-Net's He init on the convs of the un-normalised stream: the coarse path swamps the skip
    torch.manual_seed(0)
    up_he, skip_he = _finest_up_and_skip_std(SegResMamba(1, 3, mamba_levels=(), conv_init="he"))
    assert up_he / skip_he > 4, (up_he, skip_he)


def test_conv_init_chooses_the_convolutions_init_only():
    torch.manual_seed(0)
    default = SegResMamba(1, 3, widths=(8, 16), depths=(1, 1), decoder_depths=(1,), strides=((2, 2, 2),),
                          mamba_levels=(1,))
    torch.manual_seed(0)
    he = SegResMamba(1, 3, widths=(8, 16), depths=(1, 1), decoder_depths=(1,), strides=((2, 2, 2),),
                     mamba_levels=(1,), conv_init="he")
    w = dict(default.named_parameters())
    convs = {f"{m}.{p}" for m, mod in he.named_modules() if isinstance(mod, nn.Conv3d)
             for p, _ in mod.named_parameters(recurse=False)}
    assert convs and any(".mamba." in k for k in w)
    for name, p in he.named_parameters():
        assert torch.equal(p, w[name]) != (name in convs), name  # only the 3D convs (kernels, biases) differ
    # PyTorch's default: uniform with bound 1/sqrt(fan_in); He (a=1e-2): normal with std ~ sqrt(2/fan_in)
    k = default.encoder.downsamples[0].conv.weight
    fan_in = k[0].numel()
    assert k.abs().max().item() <= 1 / fan_in ** 0.5
    assert abs(he.encoder.downsamples[0].conv.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.1
    with pytest.raises(ValueError, match="conv_init"):
        SegResMamba(1, 3, conv_init="xavier")
