import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.architectures import PlanError, PlanSpec, build_network
from nnunet_ext.architectures.missu import MISSU
from nnunet_ext.bench.counts import count_parameters
from nnunet_ext.blocks.distillation import self_distillation_loss
from nnunet_ext.cli.main import main as cli_main

PAPER_PARAMS = 10.50e6  # MISSU paper, complexity table (BraTS, 128^3, 4 modalities)
PAPER_MACS = 132.11e9  # same table (GFLOPs column)


# ------------------------------------------------------------------ parity (meta device)
@pytest.fixture(scope="module")
def summary_128():
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["summary", "--arch", "missu", "--patch", "128", "128", "128", "--input-channels", "4",
                       "--num-classes", "4", "--json"])
    assert rc == 0
    return json.loads(buf.getvalue())


def test_summary_parity_with_paper(summary_128):
    s = summary_128
    assert s["strides"][:4] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # nnU-Net's planner at 128^3
    assert abs(s["params_inference"] - PAPER_PARAMS) / PAPER_PARAMS < 0.10
    # MSF is training-only: counted in params, not at inference
    with torch.device("meta"):
        net = build_network("missu", PlanSpec.from_patch((128, 128, 128)), 4, 4, False)
    assert s["params"] - s["params_inference"] == sum(p.numel() for p in net.msf.parameters()) > 0
    assert s["params_inference"] == count_parameters(net, inference=True)


def test_macs_split_into_layers_and_attention_products():
    spec = PlanSpec.from_patch((128, 128, 128))
    with torch.device("meta"):
        net = build_network("missu", spec, 4, 4, False).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(torch.zeros(1, 4, 128, 128, 128))
    ops = {str(k): v // 2 for k, v in counter.get_flop_counts()["Global"].items()}
    n, d, layers = 16 ** 3, 512, 4  # paper: tokens at 1/8 of 128^3, width 512, 4 layers
    attention = sum(v for k, v in ops.items() if "bmm" in k or "attention" in k)
    assert attention == layers * 2 * n * n * d  # Q K^T and A V
    layer_macs = counter.get_total_flops() // 2 - attention  # convs and linears: what the paper counts
    assert abs(layer_macs - PAPER_MACS) / PAPER_MACS < 0.10


# ------------------------------------------------------------------ sizes from the plan
def test_patch_not_divisible_names_the_axis():
    spec = PlanSpec(patch_size=(20, 64, 64), strides=[[1, 1, 1]] + [[2, 2, 2]] * 4)
    with pytest.raises(PlanError, match=r"axis 0 .*16 or 24"):
        build_network("missu", spec, 1, 2)


# expected scales: the plan's total stride spread by plans.deepest_first_strides (3 down-samplings) by hand
@pytest.mark.parametrize("patch, strides, scales, grid", [
    ((16, 32, 32), [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
     [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]], (2, 4, 4)),
    ((8, 32, 24), [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]],  # anisotropic: z pooled once, last
     [[1, 1, 1], [1, 0.5, 0.5], [1, 0.25, 0.25]], (4, 4, 3)),
])
def test_deep_supervision_shapes_from_plan(patch, strides, scales, grid):
    spec = PlanSpec(patch_size=patch, strides=strides)
    net = build_network("missu", spec, 2, 3, deep_supervision=True).eval()
    assert net.deep_supervision_scales == scales
    assert net.get_parameter(net.key_to_lpe).shape == (1, math.prod(grid), 512)  # paper: d = 512
    x = torch.randn(1, 2, *patch)
    with torch.no_grad():
        outs = net(x)
        assert [tuple(o.shape) for o in outs] == [(1, 3, *(round(p * s) for p, s in zip(patch, sc))) for sc in scales]
        net.deep_supervision = False
        assert net(x).shape == (1, 3, *patch)


# ------------------------------------------------------------------ MSF: training only
def _small(patch=(8, 16, 16), ds=True) -> MISSU:
    return MISSU(1, 2, patch, widths=(4, 8, 8, 16), embed_dim=16, num_heads=2, ffn_dim=16, deep_supervision=ds)


def test_eval_forward_never_runs_msf_training_forward_does():
    net = _small()
    calls = []
    for name, m in net.msf.named_modules():
        if name:
            m.register_forward_hook(lambda mod, inp, out, name=name: calls.append(name))
    x = torch.randn(2, 1, 8, 16, 16)
    net.eval()
    with torch.no_grad():
        net(x)
    assert calls == [] and net.distillation_features is None
    net.train()
    net(x)
    assert {"blocks.0", "blocks.1", "blocks.2", "downs.0", "downs.1"} <= set(calls)
    local, fused = net.take_distillation_features()
    assert net.distillation_features is None  # taken: memory freed
    # widths (4, 8, 8) of _small at the patch, / 2, / 4 (the default strides 3 x (2, 2, 2))
    assert [tuple(f.shape) for f in local] == [(2, 4, 8, 16, 16), (2, 8, 4, 8, 8), (2, 8, 2, 4, 4)]
    assert [o.shape for o in fused] == [f.shape for f in local]


def test_msf_is_in_the_state_dict_but_not_an_inference_parameter():
    spec = PlanSpec(patch_size=(16, 32, 32), strides=[[1, 1, 1]] + [[2, 2, 2]] * 4)
    train_net = build_network("missu", spec, 1, 3, deep_supervision=True)
    infer_net = build_network("missu", spec, 1, 3, deep_supervision=False)
    assert any(k.startswith("msf.") for k in train_net.state_dict())
    infer_net.load_state_dict(train_net.state_dict(), strict=True)
    msf = sum(p.numel() for p in train_net.msf.parameters())
    assert count_parameters(train_net) - count_parameters(train_net, inference=True) == msf > 0


def test_distillation_gradients_reach_msf_and_encoder_only():
    net = _small().train()
    net(torch.randn(2, 1, 8, 16, 16))
    self_distillation_loss(*net.take_distillation_features()).backward()
    for p in net.msf.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert net.encoder.stem.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.decoder.parameters())
    assert all(p.grad is None for p in net.bottleneck.parameters())


def test_builds_and_runs_on_meta_device_in_both_modes():
    with torch.device("meta"):
        net = _small()
        outs = net(torch.zeros(1, 1, 8, 16, 16))
        assert outs[0].shape == (1, 2, 8, 16, 16) and net.take_distillation_features() is not None
        net.eval()
        assert net(torch.zeros(1, 1, 8, 16, 16))[0].is_meta
