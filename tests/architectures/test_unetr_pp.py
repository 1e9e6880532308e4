"""UNETR++: paper parity (meta device), its strides from a plan, and forwards for any plan."""

import json
import math

import pytest
import torch

from nnunet_ext.architectures import PlanError, PlanSpec, build_network, get_architecture
from nnunet_ext.architectures.plans import stride_product
from nnunet_ext.architectures.unetr_pp import UNETRPP
from nnunet_ext.bench.counts import count_macs, count_parameters
from nnunet_ext.cli.main import main

# reduced widths/depths for real (CPU) forwards
SMALL = dict(widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1), feature_size=8,
             proj_sizes=(16, 16, 16, 8), decoder_proj_size=16)


def _small(spec, input_channels, num_classes):
    return UNETRPP(input_channels, num_classes, spec.patch_size, get_architecture("unetr_pp").strides(spec), **SMALL)


# ----------------------------------------------------------------------------- paper parity
def test_synapse_parity_through_the_cli(capsys):
    """`nnunet-ext summary --arch unetr_pp --patch 64 128 128 --input-channels 1 --num-classes 14 --json`:
    paper (Synapse, Table I) 42.96 M parameters, 47.98 GMACs."""
    assert main(["summary", "--arch", "unetr_pp", "--patch", "64", "128", "128", "--input-channels", "1",
                 "--num-classes", "14", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["strides"][0] == [1, 1, 1] and len(s["strides"]) == 6  # nnU-Net's own plan for this patch
    assert abs(s["params"] / 42.96e6 - 1) < 0.01, s["params"]
    assert abs(s["macs"] / 47.98e9 - 1) < 0.05, s["macs"]


@pytest.mark.parametrize("name,kwargs,paper_params", [
    # the public code's per-dataset settings (patch, stem, classes and its block variants) and the
    # parameter counts the public code gives for them (networks.md)
    ("ACDC", dict(input_channels=1, num_classes=4, patch_size=(16, 160, 160),
                  strides=((1, 4, 4),) + ((2, 2, 2),) * 3, epa_conv_blocks=2, share_token_proj=False), 66.8e6),
    ("Lung", dict(input_channels=1, num_classes=2, patch_size=(32, 192, 192),
                  strides=((1, 4, 4),) + ((2, 2, 2),) * 3, epa_conv_blocks=2, share_token_proj=False), 121.2e6),
    ("BraTS", dict(input_channels=4, num_classes=3, patch_size=(128, 128, 128),
                   strides=((4, 4, 4),) + ((2, 2, 2),) * 3, fusion="sum"), 42.65e6),
])
def test_other_paper_settings_parameter_counts(name, kwargs, paper_params):
    with torch.device("meta"):
        net = UNETRPP(**kwargs, deep_supervision=False)
    assert abs(count_parameters(net) / paper_params - 1) < 0.01, (name, count_parameters(net))


# ----------------------------------------------------------------------------- strides from a plan
@pytest.mark.parametrize("spec, strides", [
    # isotropic 64x128x128, total (16, 32, 32): the paper's Synapse stem and strides
    (PlanSpec.from_patch((64, 128, 128)), ((2, 4, 4),) + ((2, 2, 2),) * 3),
    # 128^3, total 32: the paper's BraTS stem
    (PlanSpec.from_patch((128, 128, 128)), ((4, 4, 4),) + ((2, 2, 2),) * 3),
    # anisotropic, in-plane-only first poolings, total (4, 32, 32) (plans.stem_remainder_strides by hand)
    (PlanSpec.from_patch((20, 192, 192), spacing=(5, 0.8, 0.8)), ((2, 4, 4), (1, 2, 2), (1, 2, 2), (2, 2, 2))),
])
def test_strides_from_plan_reach_the_layers(spec, strides):
    assert get_architecture("unetr_pp").strides(spec) == strides
    with torch.device("meta"):
        net = build_network("unetr_pp", spec, 1, 2)
    # the network's total stride is the plan's: the deepest stage is patch / total stride
    assert stride_product(strides) == spec.total_stride
    assert net.encoder.stage_sizes[-1] == tuple(p // t for p, t in zip(spec.patch_size, spec.total_stride))


# ----------------------------------------------------------------------------- any plan
def _check_outputs(net, spec, input_channels, num_classes, batch=1, device="cpu"):
    x = torch.randn(batch, input_channels, *spec.patch_size, device=device)
    net.deep_supervision = True
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == len(net.deep_supervision_scales) == 3
    assert net.deep_supervision_scales[0] == [1.0, 1.0, 1.0]
    for o, scale in zip(outs, net.deep_supervision_scales):  # shapes nnU-Net's DS loss expects
        assert o.shape == (batch, num_classes, *(round(p * s) for p, s in zip(spec.patch_size, scale)))
    net.deep_supervision = False
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (batch, num_classes, *spec.patch_size)
    return outs


# small patches with the planner's own strides (full-size plans run on meta below); the lowres one has
# a total stride of 4 only, so its stem and first inner stride are 1
LOWRES = PlanSpec((24, 32, 24), PlanSpec.from_patch((24, 32, 24), spacing=(2.2, 1.6, 1.6)).strides,
                  spacing=(2.2, 1.6, 1.6), configuration="3d_lowres")

PLANS = {
    "a_isotropic": (PlanSpec.from_patch((32, 32, 32)), 1, 3),
    "b_anisotropic": (PlanSpec.from_patch((8, 64, 64), spacing=(5, 0.8, 0.8)), 1, 3),  # in-plane-only first strides
    "c_2ch_5classes": (PlanSpec.from_patch((16, 32, 32), spacing=(3, 1, 1)), 2, 5),
    "d_lowres": (LOWRES, 1, 2),
}


@pytest.mark.parametrize("key", list(PLANS))
def test_forward_any_plan_reduced_width(key):
    spec, input_channels, num_classes = PLANS[key]
    net = _small(spec, input_channels, num_classes).eval()
    with torch.no_grad():
        _check_outputs(net, spec, input_channels, num_classes)


@pytest.mark.parametrize("spec,input_channels,num_classes", [
    (PlanSpec.from_patch((20, 192, 192), spacing=(5, 0.8, 0.8)), 1, 3),  # anisotropic
    (PlanSpec.from_patch((128, 128, 128)), 2, 5),
    (PlanSpec((80, 160, 128), PlanSpec.from_patch((80, 160, 128), spacing=(2.5, 1.6, 1.6)).strides,
              spacing=(2.5, 1.6, 1.6), configuration="3d_lowres"), 1, 2),
])
def test_full_size_on_meta(spec, input_channels, num_classes):
    assert spec.strides[0] == (1, 1, 1)
    with torch.device("meta"):
        net = build_network("unetr_pp", spec, input_channels, num_classes, True)
        _check_outputs(net, spec, input_channels, num_classes, batch=2, device="meta")
    # token counts (and so Linear(N, p) and the position embeddings) follow from patch and strides
    for size, stage in zip(net.encoder.stage_sizes, net.encoder.stages):
        blk = stage[0]
        assert blk.pos_embed.shape[1] == blk.attn.num_tokens == math.prod(size)
        assert blk.attn.token_proj.in_features == math.prod(size)


def test_gradients_reach_every_parameter():
    spec = PlanSpec.from_patch((8, 16, 16), spacing=(3, 1, 1))
    net = _small(spec, 2, 4).train()
    outs = net(torch.randn(2, 2, *spec.patch_size))
    sum((o * torch.randn_like(o)).mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_one_position_embedding_per_epa_block():
    """UNETR++'s Synapse model has 21 EPA blocks (networks.md: 4 encoder stages x 3 + 3 decoder stages x
    3), each with its own (1, N, C) position embedding; every conv that reads the input is named."""
    with torch.device("meta"):
        net = build_network("unetr_pp", PlanSpec.from_patch((32, 32, 32)), 3, 4, deep_supervision=False)
    embeddings = [p for n, p in net.named_parameters() if n.endswith("pos_embed")]
    assert len(embeddings) == 21 and net.get_parameter(net.key_to_lpe) is embeddings[0]
    # total stride 8 -> stem (2, 2, 2) (stem_remainder_strides): the first stage has 16^3 tokens of width 32
    assert embeddings[0].shape == (1, 16 ** 3, 32)
    n_in = sum(1 for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels == 3)
    assert n_in == len(net.keys_to_in_proj)


def test_deep_supervision_scales_follow_the_strides():
    spec = PlanSpec.from_patch((20, 192, 192), spacing=(5, 0.8, 0.8))
    with torch.device("meta"):
        net = build_network("unetr_pp", spec, 1, 2)
    # stem (2, 4, 4), first inner stride (1, 2, 2) (stem_remainder_strides by hand)
    assert net.deep_supervision_scales == [[1.0, 1.0, 1.0], [0.5, 0.25, 0.25], [0.5, 0.125, 0.125]]


def test_mac_count_is_linear_in_tokens():
    """Spatial attention is N x p: doubling the patch (and so N at every stage) about doubles the MACs
    (an N x N attention would quadruple its part)."""
    macs = []
    for patch in ((32, 64, 64), (64, 64, 64)):
        with torch.device("meta"):
            net = UNETRPP(1, 2, patch_size=patch, strides=((2, 2, 2),) * 4)
        macs.append(count_macs(net, (1, 1, *patch)))
    assert 1.9 < macs[1] / macs[0] < 2.1


def test_unbuildable_plan_names_the_axis():
    spec = PlanSpec((20, 190, 192), PlanSpec.from_patch((20, 192, 192), spacing=(5, 0.8, 0.8)).strides)
    with pytest.raises(PlanError, match="axis 1"):
        build_network("unetr_pp", spec, 1, 2)
