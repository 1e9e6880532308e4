"""torch.compile of the Mamba blocks and of SegMamba / SegResMamba, the way nnU-Net compiles them.

nnU-Net's predictor runs ``torch.compile(network)`` (default compiler: inductor) whenever
``nnUNet_compile`` is true, whatever the trainer. The selective scan and the causal conv are opaque
to dynamo (tests/ops/test_compile.py), so a compiled network must predict what the eager one does:

- a Mamba layer with inductor, and the two networks with ``aot_eager`` and ``fullgraph=True``
  (no graph break anywhere in the network; dynamo, AOTAutograd and fake tensors without code
  generation) -- these are quick;
- SegResMamba through nnU-Net's own ``nnUNetPredictor`` with ``nnUNet_compile=1`` (inductor
  generates and compiles C++ for every fused region of the network, minutes on a 2-core CPU:
  marked ``e2e`` with the other slow tests).

Tolerance: the compiled graph reorders float32 reductions (fused norms, convolutions, linears), so
its logits differ from the eager ones by float32 rounding: at most
:func:`tests.ops.precision.f32_tolerance` with the patch's voxel count as the reduction length (the
longest reduction, the instance/group norms over the patch) and the logits' magnitude (plus, for
the predictor's sliding-window output, its float16 accumulation). The segmentation (argmax) must
then agree at every voxel whose top-two eager logits are further apart than twice the tolerance --
the voxels where an error of that size cannot flip the argmax.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from nnunet_ext.architectures import PlanSpec, build_network
from nnunet_ext.blocks.mamba import MambaLayer
from tests.ops.precision import f32_tolerance

PATCH = (16, 16, 16)
SPEC = PlanSpec(PATCH, ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)))


def small_network(name: str) -> torch.nn.Module:
    """The network nnU-Net's trainer builds for a small plan (16^3 patch, 3 poolings): the paper's
    widths, every level, a Mamba layer at each of its Mamba levels; in eval mode, as predicted."""
    torch.manual_seed(0)
    return build_network(name, SPEC, 1, 3, deep_supervision=False).eval()


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def assert_same_prediction(compiled: torch.Tensor, eager: torch.Tensor, tol: float) -> None:
    """Logits (B, K, *spatial) within ``tol``; argmax equal wherever an error of ``tol`` cannot flip it."""
    assert compiled.shape == eager.shape and compiled.dtype == eager.dtype
    assert torch.isfinite(compiled).all()
    err = (compiled - eager).abs().max().item()
    assert err <= tol, f"max |compiled - eager| {err:.3g} > {tol:.3g}"
    top2 = eager.float().topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert decided.float().mean() > 0.8  # the check below covers most voxels
    assert torch.equal(compiled.argmax(1)[decided], eager.argmax(1)[decided])


def network_tolerance(eager: torch.Tensor) -> float:
    """float32 rounding of reordered reductions, the longest over the patch's voxels."""
    return f32_tolerance(math.prod(PATCH), eager.abs().max().item())


# --------------------------------------------------------------------------- quick

def test_mamba_layer_compiled_with_inductor_equals_eager():
    """The default compiler (inductor), as nnU-Net calls it, on a block with both ops."""
    torch.manual_seed(0)
    layer = MambaLayer(8, d_state=4).eval()
    x = torch.randn(2, 8, 3, 5, 7)
    compiled = torch.compile(layer)
    with torch.inference_mode():
        eager, out = layer(x), compiled(x)
    assert out.shape == eager.shape
    # LayerNorm over C, in_proj/out_proj over C/E, the scan over B*L tokens
    torch.testing.assert_close(out, eager, rtol=0, atol=f32_tolerance(2 * 105 + 16, eager.abs().max().item()))


@pytest.mark.parametrize("name", ["segresmamba", "segmamba"])
def test_network_inference_compiles_without_graph_break(name):
    net = small_network(name)
    x = torch.randn(1, 1, *PATCH)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        eager, out = net(x), compiled(x)
    assert_same_prediction(out, eager, network_tolerance(eager))


def test_mamba_layer_compiled_training_equals_eager():
    """Gradients needed: every scan and conv runs eagerly behind a graph break; same gradients."""
    torch.manual_seed(0)
    layer = MambaLayer(8, d_state=4)
    twin = copy.deepcopy(layer)
    compiled = torch.compile(twin, backend="aot_eager")
    x = torch.randn(2, 8, 3, 5, 7)
    g = torch.randn(2, 8, 3, 5, 7)
    (layer(x) * g).sum().backward()
    (compiled(x) * g).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


# --------------------------------------------------------------------------- nnU-Net's predictor

def _predictor(network, compile_: bool, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager({"configurations": {"3d_fullres": {
        "data_identifier": "d", "patch_size": list(PATCH), "spacing": [1.0, 1.0, 1.0],
        "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []}}}})
    if compile_:
        monkeypatch.setenv("nnUNet_compile", "1")
    else:
        monkeypatch.delenv("nnUNet_compile", raising=False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans, plans.get_configuration("3d_fullres"), None,
                                    {"labels": {"background": 0, "a": 1, "b": 2}}, "Trainer", None)
    return predictor


@pytest.mark.e2e
# one network through inductor (minutes of C++ code generation on 2 cores); SegMamba's graph is
# proven free of breaks by test_network_inference_compiles_without_graph_break
@pytest.mark.parametrize("name", ["segresmamba"])
def test_nnunet_predictor_with_nnunet_compile(name, monkeypatch):
    """nnUNetPredictor with nnUNet_compile=1 wraps the network in torch.compile (inductor) itself;
    the compiled network's logits equal the eager ones, and so do the sliding-window predictions
    up to nnU-Net's float16 accumulation of overlapping windows."""
    from torch._dynamo.eval_frame import OptimizedModule

    net = small_network(name)
    image = torch.randn(1, 24, 20, 16)  # larger than the patch: overlapping windows
    eager = _predictor(copy.deepcopy(net), False, monkeypatch)
    compiled = _predictor(net, True, monkeypatch)
    assert isinstance(compiled.network, OptimizedModule) and not isinstance(eager.network, OptimizedModule)

    ref = eager.predict_sliding_window_return_logits(image)
    out = compiled.predict_sliding_window_return_logits(image)  # compiles on the first window
    with torch.inference_mode():
        patch = image[None, :, :16, :16, :16]
        net_ref, net_out = eager.network(patch), compiled.network(patch)
    assert_same_prediction(net_out, net_ref, network_tolerance(net_ref))

    # the predictor sums the gaussian-weighted windows and their weights in float16 (k windows per
    # voxel at most): each run is within (k + 1/2) float16 epsilons of the exact quotient
    assert ref.dtype == out.dtype == torch.float16
    k = len(eager._internal_get_sliding_window_slicers(image.shape[1:]))
    mag = ref.abs().max().item()
    tol16 = (2 * k + 1) * torch.finfo(torch.float16).eps * mag + network_tolerance(net_ref)
    assert_same_prediction(out[None], ref[None], tol16)
