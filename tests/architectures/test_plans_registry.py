import pytest
import torch

from nnunet_ext.architectures import PlanError, PlanSpec, available_architectures, build_network
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.architectures.summary import count_macs, count_parameters, summarize


def test_from_patch_follows_nnunet_planner():
    spec = PlanSpec.from_patch((40, 48, 40))
    assert spec.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert spec.total_stride == (8, 8, 8)
    aniso = PlanSpec.from_patch((20, 192, 192), spacing=(5.0, 0.8, 0.8))
    assert aniso.strides[1] == (1, 2, 2)  # in-plane only first, as nnU-Net plans anisotropic data
    assert aniso.total_stride[0] < aniso.total_stride[1]


@pytest.mark.parametrize("patch, axis, hint", [((42, 48, 40), 0, "40 or 48"), ((40, 50, 40), 1, "48 or 56"),
                                               ((40, 48, 4), 2, "8")])
def test_indivisible_patch_names_axis_and_fix(patch, axis, hint):
    spec = PlanSpec(patch, ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(PlanError, match=rf"on axis {axis} .*multiple of 8 \(e\.g\. {hint}\)"):
        build_network("small_unet", spec, 1, 2)


def test_2d_and_malformed_specs_are_rejected():
    with pytest.raises(PlanError, match="3 entries"):
        PlanSpec((64, 64), ((1, 1), (2, 2)))


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(KeyError, match="known: .*small_unet"):
        build_network("nope", PlanSpec.from_patch((32, 32, 32)), 1, 2)


def test_double_registration_fails():
    with pytest.raises(ValueError, match="registered twice"):
        register_architecture("small_unet", trainer="X", title="X", paper="X")(lambda *a: None)


@pytest.mark.parametrize("ds", [True, False])
def test_small_unet_outputs_match_its_scales(ds):
    spec = PlanSpec.from_patch((24, 32, 16))
    net = build_network("small_unet", spec, 2, 4, ds)
    out = net(torch.randn(2, 2, 24, 32, 16))
    outs = out if ds else [out]
    assert len(outs) == (len(net.deep_supervision_scales) if ds else 1)
    for o, s in zip(outs, net.deep_supervision_scales):
        assert o.shape == (2, 4, *[int(p * f) for p, f in zip(spec.patch_size, s)])


def test_summary_counts_parameters_and_macs_scale_with_volume():
    small = summarize("small_unet", (32, 32, 32), 1, 3)
    net = build_network("small_unet", PlanSpec.from_patch((32, 32, 32)), 1, 3, False)
    assert small["params"] == sum(p.numel() for p in net.parameters()) == count_parameters(net)
    assert small["macs"] > 0
    # same network (same strides), twice the volume -> twice the MACs
    spec2 = PlanSpec((64, 32, 32), PlanSpec.from_patch((32, 32, 32)).strides)
    net2 = build_network("small_unet", spec2, 1, 3, False)
    assert count_macs(net2, (1, 1, 64, 32, 32)) == 2 * count_macs(net, (1, 1, 32, 32, 32))


def test_every_registered_network_counts_on_meta():
    for arch in available_architectures():
        s = summarize(arch, (32, 64, 64), 1, 3)
        assert s["params"] >= s["params_inference"] > 0 and s["macs"] > 0
