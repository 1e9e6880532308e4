"""Every network starts from logits of order one: a freshly built network's outputs on a unit-variance
input have a standard deviation between 0.05 and 10 (a network outside that range first has to unlearn
its initialisation: the softmax is saturated or flat and the first losses are huge or uninformative)."""

import pytest
import torch

from nnunet_ext.architectures import PlanSpec, available_architectures, build_network

SPEC = PlanSpec.from_patch((16, 32, 32), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("name", available_architectures())
def test_logits_are_of_order_one_at_initialisation(name):
    torch.manual_seed(0)
    net = build_network(name, SPEC, 1, 3, deep_supervision=True).eval()
    with torch.no_grad():
        outputs = net(torch.randn(2, 1, *SPEC.patch_size))
    for i, out in enumerate(outputs):
        std = out.std().item()
        assert 0.05 < std < 10, f"{name}: output {i} has logit std {std:.3g} at initialisation"


def encoder_scale_ratio(net, x: torch.Tensor) -> float:
    """Largest over smallest standard deviation of the encoder's per-level features for input ``x``."""
    with torch.no_grad():
        stds = [f.std().item() for f in net.encoder(x)]
    return max(stds) / min(stds)


#: networks whose encoder keeps an un-normalised residual stream (SegResNet / TransBTS style: plain
#: stem and stride-2 convs, pre-activation residual blocks)
PRE_ACTIVATION = ["missu", "segresmamba"]


@pytest.mark.parametrize("name", PRE_ACTIVATION)
def test_pre_activation_encoders_keep_their_stream_at_one_scale(name):
    """With PyTorch's init (``conv_init="pytorch"``, their reference code's) the encoder's features keep
    the input's scale from level to level; nnU-Net's He init (``conv_init="he"``) doubles the stream's
    variance at every plain conv, so the deepest level starts several times larger than the first."""
    spec = PlanSpec.from_patch((32, 32, 32), (1.0, 1.0, 1.0))
    x = torch.randn(2, 1, *spec.patch_size)
    ratios = {}
    for init in ("pytorch", "he"):
        torch.manual_seed(0)
        net = build_network(name, spec, 1, 3, deep_supervision=True, conv_init=init).eval()
        ratios[init] = encoder_scale_ratio(net, x)
    assert ratios["pytorch"] < 2, ratios
    assert ratios["he"] > 2.5, ratios
