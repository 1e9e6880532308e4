"""SegMamba and SegResMamba through the ``cuda`` back-end, on CPU tensors, under autocast: every
call they make to mamba-ssm's ``selective_scan_fn`` and causal-conv1d's ``causal_conv1d_fn`` meets
the kernels' contracts (strict fakes, tests/ops/kernel_fakes.py), and training and inference give
finite outputs and gradients.

What a GPU run would see: nnU-Net trains with ``torch.autocast("cuda")`` (float16) and predicts
under autocast too, so the kernels receive half-precision activations beside float32 parameters.
CPU autocast with float16 and with bfloat16 gives the same dtype mix. UNETR++ and MISSU call no
scan or causal conv, so they are not here.

The fakes compute the scan with the blocked PyTorch scan (equal to the sequential reference, see
tests/ops/test_backend_equivalence.py) because the sequential reference's autograd graph over
SegResMamba's 4 096-token stage takes minutes on two cores.
"""

import pytest
import torch

from nnunet_ext.architectures import PlanSpec, build_network
from nnunet_ext.ops import backends
from nnunet_ext.ops.selective_scan import selective_scan_torch
from tests.ops import kernel_fakes

PATCH = (16, 16, 16)  # nnU-Net plans two poolings: strides (1,1,1), (2,2,2), (2,2,2)


@pytest.fixture(autouse=True)
def _fresh_probes():
    backends.clear_cache()
    yield
    backends.clear_cache()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["segmamba", "segresmamba"])
def test_training_and_inference_meet_the_kernel_contracts(monkeypatch, arch, dtype):
    calls = kernel_fakes.route_cuda_backend_to_fakes(monkeypatch, scan_compute=selective_scan_torch)
    spec = PlanSpec.from_patch(PATCH)
    assert len(spec.strides) == 3
    net = build_network(arch, spec, 1, 3, True)
    x = torch.randn(1, 1, *PATCH)

    # training step: deep-supervision outputs, a loss over all of them, backward (errors raise here)
    with torch.autocast("cpu", dtype=dtype):
        outputs = net(x)
        loss = sum(o.float().square().mean() / 2 ** i for i, o in enumerate(outputs))
    # float16 training scales the loss (nnU-Net's GradScaler starts at 2**16) so that small gradients do
    # not underflow in the float16 backward; bfloat16 has float32's range and needs no scaling
    (loss * (2.0 ** 16 if dtype == torch.float16 else 1.0)).backward()
    assert calls["scan"] and calls["conv"], "the cuda back-end was not used"
    # the kernels received what a GPU under autocast would give them: activations in the autocast
    # dtype, A / D / delta_bias and the conv's weight and bias in float32
    for c in calls["scan"]:
        assert {c[k][1] for k in ("u", "delta", "B", "C", "z")} == {dtype}, c
        assert {c[k][1] for k in ("A", "D", "delta_bias")} == {torch.float32}, c
    for c in calls["conv"]:
        assert c["x"][1] == dtype and c["weight"][1] == torch.float32 and c["activation"] == "silu", c
        assert c["x"][2][-1] == 1, f"x reaches the conv kernel not contiguous along L: strides {c['x'][2]}"
    for o in outputs:
        assert torch.isfinite(o.float()).all()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    mamba = [p.grad for n, p in net.named_parameters() if n.endswith(("A_log", ".D", "dt_proj.weight"))]
    assert mamba and all(g.abs().sum() > 0 for g in mamba)

    # inference as nnU-Net's predictor runs it: eval mode, full-resolution output only, no autograd
    n_scan = len(calls["scan"])
    net.eval()
    net.deep_supervision = False
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        pred = net(x)
    pred = pred[0] if isinstance(pred, (list, tuple)) else pred
    assert pred.shape == (1, 3, *PATCH) and torch.isfinite(pred.float()).all()
    assert len(calls["scan"]) > n_scan
