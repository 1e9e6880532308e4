"""The plan -> network vocabulary: PlanSpec, the stride rules, the registry, check_plan, and the
conventions every registered network follows (deep supervision, keys)."""

import pytest
import torch

from nnunet_ext.architectures import (PlanError, PlanSpec, available_architectures, build_network, check_plan,
                                      get_architecture, register_architecture)
from nnunet_ext.architectures import registry
from nnunet_ext.architectures.base import ExtNetwork, scales_from_strides
from nnunet_ext.architectures.plans import (cumulative_strides, deepest_first_strides, plan_strides,
                                            stem_first_strides, stem_remainder_strides, stride_product)
from nnunet_ext.blocks.conv import SegmentationHeads
from tests.plans import plans_manager


def _spec(total, patch=None):
    """A spec whose plan pools to ``total`` per axis (one pooling per factor, deepest last)."""
    strides, left = [(1, 1, 1)], list(total)
    while any(t > 1 for t in left):
        f = [next(p for p in range(2, t + 1) if t % p == 0) if t > 1 else 1 for t in left]
        strides.append(tuple(f))
        left = [t // k for t, k in zip(left, f)]
    return PlanSpec(patch or tuple(8 * t for t in total), strides)


# ----------------------------------------------------------------------------------- PlanSpec
def test_from_patch_follows_nnunet_planner():
    # expected: what nnU-Net's get_pool_and_conv_props gives (pool while an axis keeps >= 4 voxels)
    spec = PlanSpec.from_patch((40, 48, 40))
    assert spec.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert spec.total_stride == (8, 8, 8) == stride_product(spec.strides)
    aniso = PlanSpec.from_patch((20, 192, 192), spacing=(5.0, 0.8, 0.8))
    assert aniso.strides[1] == (1, 2, 2)  # in-plane only first, as nnU-Net plans anisotropic data
    assert aniso.total_stride == (4, 32, 32)


def test_cumulative_strides_and_product():
    strides = ((1, 2, 2), (2, 2, 2), (3, 1, 2))
    assert cumulative_strides(strides) == [(1, 2, 2), (2, 4, 4), (6, 4, 8)]
    assert stride_product(strides) == cumulative_strides(strides)[-1]


@pytest.mark.parametrize("patch, axis, hint", [((42, 48, 40), 0, "40 or 48"), ((40, 50, 40), 1, "48 or 56"),
                                               ((40, 48, 4), 2, "8")])
def test_indivisible_patch_names_axis_and_fix(patch, axis, hint):
    spec = PlanSpec(patch, ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(PlanError, match=rf"on axis {axis} .*multiple of 8 \(e\.g\. {hint}\)"):
        build_network("small_unet", spec, 1, 2)


def test_2d_specs_are_rejected():
    with pytest.raises(PlanError, match="3 entries"):
        PlanSpec((64, 64), ((1, 1), (2, 2)))


# ----------------------------------------------------------------------------------- stride rules
# Expected strides: each rule's docstring in plans.py applied by hand.
RULE_CASES = [
    (deepest_first_strides, 3, (32, 32, 32), ((2, 2, 2),) * 3),
    (deepest_first_strides, 3, (4, 32, 32), ((1, 2, 2), (2, 2, 2), (2, 2, 2))),
    (deepest_first_strides, 3, (2, 4, 4), ((1, 1, 1), (1, 2, 2), (2, 2, 2))),
    (deepest_first_strides, 3, (1, 1, 1), ((1, 1, 1),) * 3),
    (stem_first_strides, 4, (32, 32, 32), ((2, 2, 2),) * 4),
    (stem_first_strides, 4, (8, 8, 8), ((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1))),
    (stem_first_strides, 4, (4, 64, 64), ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))),
    (stem_first_strides, 4, (2, 4, 4), ((2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1))),
    (stem_first_strides, 4, (1, 4, 4), ((1, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1))),
    (stem_remainder_strides, 4, (16, 32, 32), ((2, 4, 4), (2, 2, 2), (2, 2, 2), (2, 2, 2))),
    (stem_remainder_strides, 4, (32, 32, 32), ((4, 4, 4), (2, 2, 2), (2, 2, 2), (2, 2, 2))),
    (stem_remainder_strides, 4, (4, 32, 32), ((2, 4, 4), (1, 2, 2), (1, 2, 2), (2, 2, 2))),
    (stem_remainder_strides, 4, (8, 8, 8), ((2, 2, 2), (1, 1, 1), (2, 2, 2), (2, 2, 2))),
    (stem_remainder_strides, 4, (1, 4, 4), ((1, 2, 2), (1, 1, 1), (1, 1, 1), (1, 2, 2))),
    # a hand-edited plan with a factor 3: taken whole, deepest first
    (stem_remainder_strides, 4, (12, 8, 8), ((2, 2, 2), (1, 1, 1), (3, 2, 2), (2, 2, 2))),
]


@pytest.mark.parametrize("rule, downsamplings, total, expected", RULE_CASES)
def test_stride_rules_by_hand(rule, downsamplings, total, expected):
    spec = _spec(total)
    assert spec.total_stride == total
    got = rule(spec, downsamplings)
    assert got == expected and len(got) == downsamplings
    # the network's total stride divides the plan's: every patch nnU-Net plans is valid
    assert all(t % n == 0 for t, n in zip(total, stride_product(got)))


def test_plan_strides_are_the_plans_own():
    spec = PlanSpec.from_patch((20, 192, 192), spacing=(5.0, 0.8, 0.8))
    assert plan_strides(spec) == spec.strides


@pytest.mark.parametrize("patch, spacing", [
    ((128, 128, 128), (1.0, 1.0, 1.0)), ((40, 48, 40), (4.0, 4.0, 4.0)), ((28, 32, 24), (6.0, 6.0, 6.0)),
    ((28, 256, 256), (3.0, 0.8, 0.8)), ((20, 192, 192), (5.0, 0.8, 0.8)), ((64, 160, 128), (2.5, 0.7, 0.7)),
    ((16, 32, 32), (1.0, 1.0, 1.0)), ((96, 96, 32), (1.0, 1.0, 4.0)),
])
@pytest.mark.parametrize("arch", sorted(available_architectures()))
def test_registered_rules_on_planner_plans(arch, patch, spacing):
    """On nnU-Net's own plans, per registered network: its strides divide the plan's total stride, an
    axis the plan pools less is never strided more often, and a fixed-depth network strides each axis
    min(poolings, down-samplings) times (UNETR++'s patch-embedding stem takes the rest)."""
    entry, spec = get_architecture(arch), PlanSpec.from_patch(patch, spacing)
    strides = entry.strides(spec)
    total, net_total = spec.total_stride, entry.divisor(spec)
    assert net_total == stride_product(strides)
    assert all(t % n == 0 for t, n in zip(total, net_total))
    assert all(net_total[a] <= net_total[b] for a in range(3) for b in range(3) if total[a] <= total[b])
    if entry.stride_rule is stem_remainder_strides:
        assert net_total == total
    elif entry.downsamplings is not None:
        assert net_total == tuple(min(t, 2 ** entry.downsamplings) for t in total)
        assert len(strides) == entry.downsamplings


# ----------------------------------------------------------------------------------- the registry
class _Probe(ExtNetwork):
    """The smallest network that follows the conventions: stride convs, one head per scale."""

    def __init__(self, input_channels, num_classes, strides, deep_supervision=True):
        super().__init__(deep_supervision)
        self.convs = torch.nn.ModuleList(torch.nn.Conv3d(input_channels, 4, s, s) for s in strides)
        self.heads = SegmentationHeads([4] * len(strides), num_classes)
        self.deep_supervision_scales = scales_from_strides(cumulative_strides(strides))

    def forward(self, x):
        return self.heads([conv(x) for conv in self.convs], self.deep_supervision)


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_fifth_network_needs_one_registration(fresh_registry):
    received = []

    @register_architecture("probe", trainer="ProbeTrainer", title="Probe", paper="-",
                           downsamplings=3, stride_rule=deepest_first_strides)
    def build_probe(spec, strides, input_channels, num_classes, deep_supervision):
        received.append(strides)
        return _Probe(input_channels, num_classes, strides, deep_supervision)

    spec = PlanSpec.from_patch((20, 192, 192), spacing=(5.0, 0.8, 0.8))  # total (4, 32, 32)
    entry = get_architecture("probe")
    assert "probe" in available_architectures()
    assert entry.strides(spec) == ((1, 2, 2), (2, 2, 2), (2, 2, 2)) and entry.divisor(spec) == (4, 8, 8)
    net = build_network("probe", spec, 1, 2, deep_supervision=False)
    assert received == [entry.strides(spec)]
    assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 2, 8, 8, 8)
    # the divisor, not the plan's total stride, is what the patch must be divisible by
    build_network("probe", PlanSpec((20, 200, 200), spec.strides), 1, 2)
    with pytest.raises(PlanError, match=r"Probe: .*axis 1 .*multiple of 8"):
        build_network("probe", PlanSpec((20, 196, 200), spec.strides), 1, 2)


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(KeyError, match="known: .*small_unet"):
        build_network("nope", PlanSpec.from_patch((32, 32, 32)), 1, 2)


def test_double_registration_fails(fresh_registry):
    with pytest.raises(ValueError, match="registered twice"):
        register_architecture("small_unet", trainer="X", title="X", paper="X", downsamplings=None,
                              stride_rule=plan_strides)(lambda *a: None)


def test_every_registration_names_an_existing_trainer():
    import nnunet_ext.trainers as trainers

    for arch in available_architectures():
        entry = get_architecture(arch)
        assert getattr(trainers, entry.trainer).arch == arch and entry.trainer in trainers.__all__


# ----------------------------------------------------------------------------------- check_plan
def test_check_plan_refuses_2d_naming_the_3d_configurations():
    pm = plans_manager((16, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)), with_2d=True)
    with pytest.raises(PlanError, match=r"SegMambaTrainer trains a 3D network \(SegMamba\), but configuration '2d' is "
                                        r"2D \(patch \[32, 32\]\)\. Use a 3D configuration of these plans: 3d_fullres"):
        check_plan("segmamba", pm.get_configuration("2d"), pm, "2d")
    spec = check_plan("segmamba", pm.get_configuration("3d_fullres"), pm, "3d_fullres")
    assert spec == PlanSpec((16, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)), features_per_stage=(32, 64, 128))


def test_check_plan_refuses_an_indivisible_patch():
    pm = plans_manager((20, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(PlanError, match=r"MISSU: .*axis 0 \(Z: 20 % 8 = 4\).*'3d_fullres'"):
        check_plan("missu", pm.get_configuration("3d_fullres"), pm, "3d_fullres")


def test_divisibility_is_checked_once_per_build(monkeypatch):
    import nnunet_ext.trainers as trainers

    calls = []
    original = PlanSpec.check_divisible
    monkeypatch.setattr(PlanSpec, "check_divisible", lambda self, *a: calls.append(a) or original(self, *a))
    pm = plans_manager((16, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)))
    with torch.device("meta"):
        trainers.SmallUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 2, True)
        assert len(calls) == 1
        build_network("small_unet", PlanSpec.from_patch((16, 32, 32)), 1, 2)
        assert len(calls) == 2


# ----------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("arch", sorted(available_architectures()))
def test_deep_supervision_is_one_attribute_forward_honours(arch):
    spec = PlanSpec.from_patch((16, 32, 32), spacing=(2.0, 1.0, 1.0))
    with torch.device("meta"):
        net = build_network(arch, spec, 2, 3, deep_supervision=True)
        x = torch.zeros(1, 2, *spec.patch_size)
        outs = net(x)
        net.deep_supervision = False
        single = net(x)
        inference = build_network(arch, spec, 2, 3, deep_supervision=False)
    assert isinstance(net, ExtNetwork) and inference.deep_supervision is False
    assert net.deep_supervision_scales[0] == [1.0, 1.0, 1.0]
    # one output per scale, at the size nnU-Net's deep-supervision loss expects
    assert [tuple(o.shape) for o in outs] == [
        (1, 3, *(round(p * s) for p, s in zip(spec.patch_size, scale))) for scale in net.deep_supervision_scales]
    assert tuple(single.shape) == (1, 3, *spec.patch_size)
    # the predictor rebuilds without deep supervision and loads the checkpoint: same keys, heads named seg_layers
    keys = net.state_dict().keys()
    assert keys == inference.state_dict().keys() and any(".seg_layers." in k for k in keys)
    for key in (net.key_to_encoder, net.key_to_stem, *net.keys_to_in_proj):
        net.get_submodule(key)
    assert all(net.get_submodule(k).weight.shape[1] == 2 for k in net.keys_to_in_proj)


def test_small_unet_outputs_match_its_scales():
    spec = PlanSpec.from_patch((24, 32, 16))
    net = build_network("small_unet", spec, 2, 4, True)
    outs = net(torch.randn(2, 2, 24, 32, 16))
    assert len(outs) == len(spec.strides) - 1 == len(net.deep_supervision_scales)
    for o, s in zip(outs, net.deep_supervision_scales):
        assert o.shape == (2, 4, *[int(p * f) for p, f in zip(spec.patch_size, s)])
    net.eval().deep_supervision = False
    x = torch.randn(1, 2, 24, 32, 16)
    with torch.no_grad():
        single = net(x)
        net.deep_supervision = True
        torch.testing.assert_close(single, net(x)[0])
