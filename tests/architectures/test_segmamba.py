"""SegMamba sized from nnU-Net's plans: stride rule, shapes, gradients, parity."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.architectures import PlanError, PlanSpec, build_network, get_architecture
from nnunet_ext.architectures.plans import deepest_first_strides, stride_product
from nnunet_ext.architectures.segmamba import NUM_DOWNSAMPLINGS, SegMamba, segmamba_divisor, segmamba_strides
from nnunet_ext.architectures.summary import count_macs, summarize
from nnunet_ext.evaluation.benchmark import build_benchmark_network

# small widths so real forwards are fast on 2 cores
TINY = dict(features=(4, 8, 8, 12), hidden_size=16, d_state=4)

ANISO_STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2))


# ---------------------------------------------------------------------------- the stride rule
# expected strides below: the rule in segmamba.py's module docstring applied by hand
@pytest.mark.parametrize("spec, strides, divisor", [
    # isotropic, 5 poolings: the paper's 4 x (2, 2, 2)
    (PlanSpec.from_patch((128, 128, 128)), [(2, 2, 2)] * 4, (16, 16, 16)),
    # anisotropic 28 x 256 x 256: z pooled twice -> the stem and the deepest down-sampling
    (PlanSpec((28, 256, 256), ANISO_STRIDES, spacing=(3.0, 0.8, 0.8)),
     [(2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)], (4, 16, 16)),
    # nnU-Net's own topology for the same patch and spacing
    (PlanSpec.from_patch((28, 256, 256), spacing=(3.0, 0.8, 0.8)),
     [(2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)], (4, 16, 16)),
    # only 3 poolings (small patch): the stem and the next two stride, the deepest stage stays at 1/8
    (PlanSpec.from_patch((32, 32, 32)), [(2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1)], (8, 8, 8)),
    # one axis never pooled
    (PlanSpec((1, 64, 64), ((1, 1, 1), (1, 2, 2), (1, 2, 2))), [(1, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)],
     (1, 4, 4)),
])
def test_strides_from_plan(spec, strides, divisor):
    assert segmamba_strides(spec) == strides
    assert segmamba_divisor(spec) == divisor
    assert get_architecture("segmamba").required_divisor(spec) == divisor
    # our divisor always divides the plan's total stride: every patch nnU-Net plans is valid
    assert all(t % d == 0 for t, d in zip(spec.total_stride, divisor))


# shallow plans: 3 and 2 poolings, isotropic (nnU-Net's planner) and anisotropic (z pooled less)
SHALLOW = [
    # the demo plan: 40 x 48 x 40 at 4 mm, total stride (8, 8, 8)
    (PlanSpec.from_patch((40, 48, 40), spacing=(4.0, 4.0, 4.0)), [(2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1)]),
    # the demo at 6 mm: 28 x 32 x 24, total stride (4, 4, 4)
    (PlanSpec.from_patch((28, 32, 24), spacing=(6.0, 6.0, 6.0)), [(2, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1)]),
    # 3 poolings, z twice: total (4, 8, 8)
    (PlanSpec((16, 64, 64), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)), spacing=(3.0, 1.0, 1.0)),
     [(2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 1, 1)]),
    # 2 poolings, z once: total (2, 4, 4)
    (PlanSpec((8, 32, 32), ((1, 1, 1), (1, 2, 2), (2, 2, 2)), spacing=(3.0, 1.0, 1.0)),
     [(2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)]),
]


@pytest.mark.parametrize("spec, strides", SHALLOW)
def test_shallow_plan_stem_strides_every_pooled_axis(spec, strides):
    got = segmamba_strides(spec)
    assert got == strides
    # the paper's stem always embeds with stride 2: every axis the plan pools at all
    assert got[0] == tuple(2 if t > 1 else 1 for t in spec.total_stride)
    # the encoder's total stride is the plan's (these plans pool each axis at most 4 times)
    assert stride_product(got) == spec.total_stride == segmamba_divisor(spec)
    with torch.device("meta"):
        net = build_network("segmamba", spec, 1, 3)
    assert net.encoder.strides == strides
    assert net.encoder.stem.conv.stride == strides[0]


@pytest.mark.parametrize("patch, spacing", [
    ((128, 128, 128), (1.0, 1.0, 1.0)), ((40, 48, 40), (4.0, 4.0, 4.0)), ((28, 32, 24), (6.0, 6.0, 6.0)),
    ((28, 256, 256), (3.0, 0.8, 0.8)), ((20, 192, 192), (5.0, 0.8, 0.8)), ((64, 160, 128), (2.5, 0.7, 0.7)),
    ((16, 32, 32), (1.0, 1.0, 1.0)), ((96, 96, 32), (1.0, 1.0, 4.0)),
])
def test_stride_rule_invariants_on_planner_plans(patch, spacing):
    """On nnU-Net's own plans: the stem strides every pooled axis; per axis the encoder strides
    min(poolings, 4) times (the cap: SegMamba down-samples 4 times); a plan with >= 4 poolings on
    every pooled axis gets the previous deepest-first strides (which MISSU and SegResMamba use)."""
    spec = PlanSpec.from_patch(patch, spacing)
    strides = segmamba_strides(spec)
    capped = tuple(min(t, 2 ** NUM_DOWNSAMPLINGS) for t in spec.total_stride)
    assert strides[0] == tuple(2 if t > 1 else 1 for t in spec.total_stride)
    assert stride_product(strides) == capped == segmamba_divisor(spec)
    if all(t == 1 or t >= 2 ** NUM_DOWNSAMPLINGS for t in spec.total_stride):
        assert strides == list(deepest_first_strides(spec.total_stride, NUM_DOWNSAMPLINGS))


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
    """The demo plan (40 x 48 x 40 at 4 mm, 1 channel, 3 classes; total stride 8 per axis). The
    previous rule (deepest first, still :func:`deepest_first_strides`) left the stem unstrided."""
    spec = PlanSpec.from_patch((40, 48, 40), spacing=(4.0, 4.0, 4.0))
    with torch.device("meta"):
        new = build_network("segmamba", spec, 1, 3, deep_supervision=False)
        old = SegMamba(1, 3, strides=deepest_first_strides(spec.total_stride, NUM_DOWNSAMPLINGS),
                       deep_supervision=False)
        nnunet = build_benchmark_network("nnunet", spec, 1, 3, deep_supervision=False)
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


def test_stem_kernel_is_one_along_unstrided_axes():
    net = SegMamba(1, 2, strides=[(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)], **TINY)
    assert net.encoder.stem.conv.kernel_size == (1, 7, 7)
    assert net.encoder.stem.conv.padding == (0, 3, 3)
    assert [d.conv.stride for d in net.encoder.downsamples] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert [u.up.stride for u in net.decoder.upsamples] == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]


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


@pytest.mark.parametrize("patch, strides, in_ch", [
    ((32, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), 1),  # isotropic
    ((8, 32, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 1)), 3),  # anisotropic
])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_forward_shapes_and_gradients(patch, strides, in_ch, deep_supervision):
    spec = PlanSpec(patch, strides)
    net = SegMamba(in_ch, 3, strides=segmamba_strides(spec), deep_supervision=deep_supervision, **TINY)
    x = torch.randn(2, in_ch, *patch)
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


def test_registry_build_and_deep_supervision_toggle():
    spec = PlanSpec.from_patch((64, 64, 64))
    with torch.device("meta"):
        net = build_network("segmamba", spec, 1, 2, deep_supervision=True)
        outs = net(torch.zeros(1, 1, 64, 64, 64))
        assert [tuple(o.shape[2:]) for o in outs] == [(64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3]
        assert net.deep_supervision_scales == [[1.0] * 3, [0.5] * 3, [0.25] * 3, [0.125] * 3]
        net.deep_supervision = False
        assert tuple(net(torch.zeros(1, 1, 64, 64, 64)).shape) == (1, 2, 64, 64, 64)
        inference = build_network("segmamba", spec, 1, 2, deep_supervision=False)
    # the predictor rebuilds with deep_supervision=False and loads the checkpoint: same keys
    assert net.state_dict().keys() == inference.state_dict().keys()


def test_anisotropic_full_size_plan_on_meta():
    """28 x 256 x 256 with in-plane-only early strides, paper widths: shapes and DS scales only."""
    spec = PlanSpec((28, 256, 256), ANISO_STRIDES, spacing=(3.0, 0.8, 0.8))
    with torch.device("meta"):
        net = build_network("segmamba", spec, 1, 4, deep_supervision=True)
        outs = net(torch.zeros(2, 1, 28, 256, 256))
    assert net.deep_supervision_scales == [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.25, 0.25], [0.5, 0.125, 0.125]]
    assert [tuple(o.shape) for o in outs] == [(2, 4, 28, 256, 256), (2, 4, 14, 128, 128), (2, 4, 14, 64, 64),
                                              (2, 4, 14, 32, 32)]


def test_keys_for_weight_transfer():
    net = SegMamba(3, 2, **TINY)
    assert net.get_submodule(net.key_to_encoder) is net.encoder
    assert net.get_submodule(net.key_to_stem) is net.encoder.stem
    for key in net.keys_to_in_proj:
        assert net.get_submodule(key).weight.shape[1] == 3


# ---------------------------------------------------------------------------- parity with the paper
def test_parity_with_public_code_parameter_count():
    """Public code at 4 input channels / 4 outputs: 67.42 M parameters. Ours (67.44 M) adds
    InstanceNorm affine weights (19.9 k), the TSMamba MLPs' LayerNorms (1.4 k) and three
    deep-supervision heads (2.7 k); without them it is 67 416 196 = the public code's count."""
    s = summarize("segmamba", (128, 128, 128), 4, 4)
    assert s["strides"][0] == [1, 1, 1]
    assert abs(s["params"] - 67.42e6) / 67.42e6 < 0.02
    assert s["params"] == s["params_inference"] == s["params_trainable"]
    # public code: ~1.46 TMACs at 128^3 (matmuls and convolutions; the scan recurrence is not counted)
    assert abs(s["macs"] - 1.46e12) / 1.46e12 < 0.02
