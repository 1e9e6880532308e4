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
