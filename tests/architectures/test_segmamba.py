"""SegMamba sized from nnU-Net's plans: its strides, shapes, gradients, parity."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.architectures import PlanError, PlanSpec, build_network, get_architecture
from nnunet_ext.architectures.plans import deepest_first_strides
from nnunet_ext.architectures.segmamba import SegMamba
from nnunet_ext.bench.counts import count_macs, summarize
from nnunet_ext.bench.networks import NNUNET, build_benchmark_network

# small widths so real forwards are fast on 2 cores
TINY = dict(widths=(4, 8, 8, 12), hidden_size=16, d_state=4)

ANISO_STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2))


def _strides(spec):
    return get_architecture("segmamba").strides(spec)


def _stage_tokens_and_macs(net, patch):
    """Tokens each TSMamba stage scans and MACs of each stage and of the whole network (one
    forward of one patch on the meta device)."""
    tokens = []
    hooks = [stage.register_forward_pre_hook(lambda m, args: tokens.append(math.prod(args[0].shape[2:])))
             for stage in net.encoder.stages]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 1, *patch, device="meta"))
    for h in hooks:
        h.remove()
    flops = {k.split(".", 1)[-1]: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    stage_macs = [flops[f"encoder.stages.{i}"] // 2 for i in range(len(net.encoder.stages))]
    return tokens, stage_macs, counter.get_total_flops() // 2


def test_demo_plan_tokens_and_macs_drop():
    """The demo plan (40 x 48 x 40 at 4 mm, 1 channel, 3 classes; total stride 8 per axis): the stem-first
    rule against the deepest-first one (which leaves the stem unstrided)."""
    spec = PlanSpec.from_patch((40, 48, 40), spacing=(4.0, 4.0, 4.0))
    with torch.device("meta"):
        new = build_network("segmamba", spec, 1, 3, deep_supervision=False)
        old = SegMamba(1, 3, strides=deepest_first_strides(spec, 4), deep_supervision=False)
        nnunet = build_benchmark_network(NNUNET, spec, 1, 3, deep_supervision=False)
    new_tokens, new_stage_macs, new_macs = _stage_tokens_and_macs(new, spec.patch_size)
    old_tokens, old_stage_macs, old_macs = _stage_tokens_and_macs(old, spec.patch_size)
    # patch / cumulative stride: new (2, 4, 8, 8), old (1, 2, 4, 8) per axis
    assert new_tokens == [20 * 24 * 20, 10 * 12 * 10, 5 * 6 * 5, 5 * 6 * 5]
    assert old_tokens == [40 * 48 * 40, 20 * 24 * 20, 10 * 12 * 10, 5 * 6 * 5]
    # a stage's matmuls and convolutions are linear in its tokens: the stem's stride 2 on 3 axes -> 1/8
    assert [8 * m for m in new_stage_macs[:3]] == old_stage_macs[:3]
    assert new_stage_macs[3] == old_stage_macs[3]  # the deepest stage stays at the plan's 1/8
    assert new_macs < old_macs
    # the project's target: SegMamba's training step at most 6x nnU-Net's; MACs alone must fit it
    assert new_macs <= 6 * count_macs(nnunet, (1, 1, *spec.patch_size))


@pytest.mark.parametrize("stem_stride, extent", [((1, 2, 2), (1, 7, 7)), ((2, 2, 2), (7, 7, 7))])
def test_stem_sees_7_voxels_along_strided_axes_and_1_along_the_others(stem_stride, extent):
    """The stem's receptive field, measured as the gradient support of one output voxel (paper: a 7^3
    stem; our choice: kernel 1 along an axis the plan never pools)."""
    net = SegMamba(1, 2, strides=[stem_stride, (1, 2, 2), (2, 2, 2), (2, 2, 2)], **TINY)
    x = torch.randn(1, 1, 10, 16, 16, requires_grad=True)
    y = net.encoder.stem(x)
    y[0, :, y.shape[2] // 2, 4, 4].sum().backward()
    support = x.grad[0, 0].abs() > 0
    assert tuple(int(support.any(dim=tuple(b for b in range(3) if b != a)).sum()) for a in range(3)) == extent
    assert y.shape[2:] == tuple(s // k for s, k in zip(x.shape[2:], stem_stride))


def test_indivisible_patch_raises_plan_error():
    spec = PlanSpec((30, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(PlanError, match=r"axis 0 \(Z: 30 % 8"):
        build_network("segmamba", spec, 1, 2)


# ---------------------------------------------------------------------------- shapes and gradients
def _run(net, x, deep_supervision):
    out = net(x)
    outs = out if deep_supervision else [out]
    assert isinstance(out, list) == deep_supervision
    return outs


@pytest.mark.parametrize("patch, strides, input_channels", [
    ((32, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), 1),  # isotropic
    ((8, 32, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 1)), 3),  # anisotropic
])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_forward_shapes_and_gradients(patch, strides, input_channels, deep_supervision):
    spec = PlanSpec(patch, strides)
    net = SegMamba(input_channels, 3, strides=_strides(spec), deep_supervision=deep_supervision, **TINY)
    x = torch.randn(2, input_channels, *patch)
    outs = _run(net, x, deep_supervision)
    expected = [tuple(int(p * s) for p, s in zip(patch, scale)) for scale in net.deep_supervision_scales]
    assert [tuple(o.shape) for o in outs] == [(2, 3, *e) for e in expected[:len(outs)]]
    assert outs[0].shape == (2, 3, *patch)
    sum(o.square().mean() for o in outs).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    if deep_supervision:
        assert not unused, f"no gradient reached {unused}"
    else:  # the deep-supervision heads are not run
        assert all(n.startswith("decoder.heads.seg_layers.") and not n.startswith("decoder.heads.seg_layers.0.")
                   for n in unused), unused


def test_anisotropic_full_size_plan_on_meta():
    """28 x 256 x 256 with in-plane-only early strides, paper widths: shapes and DS scales only
    (expected: the stem-first rule by hand, strides (2,2,2), (1,2,2), (1,2,2), (2,2,2))."""
    spec = PlanSpec((28, 256, 256), ANISO_STRIDES, spacing=(3.0, 0.8, 0.8))
    with torch.device("meta"):
        net = build_network("segmamba", spec, 1, 4, deep_supervision=True)
        outs = net(torch.zeros(2, 1, 28, 256, 256))
    assert net.deep_supervision_scales == [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.25, 0.25], [0.5, 0.125, 0.125]]
    assert [tuple(o.shape) for o in outs] == [(2, 4, 28, 256, 256), (2, 4, 14, 128, 128), (2, 4, 14, 64, 64),
                                              (2, 4, 14, 32, 32)]


# ---------------------------------------------------------------------------- parity with the paper
def test_parity_with_public_code_parameter_count():
    """Public code at 4 input channels / 4 outputs: 67.42 M parameters. Ours (67.44 M) adds
    InstanceNorm affine weights (19.9 k), the TSMamba MLPs' LayerNorms (1.4 k) and three
    deep-supervision heads (2.7 k); without them it is 67 416 196 = the public code's count."""
    s = summarize("segmamba", (128, 128, 128), 4, 4)
    assert s["strides"][0] == [1, 1, 1]
    assert abs(s["params"] - 67.42e6) / 67.42e6 < 0.02
    assert s["params"] == s["params_inference"] == s["params_trainable"]
    # public code: ~1.46 TMACs at 128^3 (networks.md; matmuls and convolutions, the scan recurrence not counted)
    assert abs(s["macs"] - 1.46e12) / 1.46e12 < 0.02
