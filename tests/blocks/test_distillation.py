"""MISSU's self-distillation loss on hand-computed examples (paper: L_sd = sum_i ||A(F_i) - A(O_i)||_2)."""

import math

import torch

from nnunet_ext.blocks.distillation import attention_map, self_distillation_loss


def _f():
    # (B=1, C=2, 1, 1, 2): channel |.|-sums per voxel: [|1| + |3|, |-2| + |0|] = [4, 2]
    return torch.tensor([[[[[1.0, -2.0]]], [[[3.0, 0.0]]]]])


def test_attention_map_hand_example():
    a = attention_map(_f())
    assert a.shape == (1, 2)
    torch.testing.assert_close(a, torch.tensor([[2 / math.sqrt(5), 1 / math.sqrt(5)]]))
    # per-sample normalisation: scaling one sample changes nothing
    two = torch.cat([_f(), 7 * _f()])
    torch.testing.assert_close(attention_map(two), a.expand(2, 2))


def test_loss_hand_example_and_batch_mean():
    o = torch.tensor([[[[[0.0, 5.0]]]]])  # one channel: map [0, 5] -> [0, 1]
    # || (2/sqrt5, 1/sqrt5) - (0, 1) ||_2 = sqrt(4/5 + (1/sqrt5 - 1)^2) = sqrt(2 - 2/sqrt5)
    expected = math.sqrt(2 - 2 / math.sqrt(5))
    torch.testing.assert_close(self_distillation_loss([_f()], [o]), torch.tensor(expected))
    # batch of two: the second pair is identical up to scale (distance 0) -> the mean halves
    f2 = torch.cat([_f(), _f()])
    o2 = torch.cat([o, torch.tensor([[[[[12.0, -6.0]]]]])])  # map [12, 6] ~ [4, 2]
    torch.testing.assert_close(self_distillation_loss([f2], [o2]), torch.tensor(expected / 2))
    # levels add up
    torch.testing.assert_close(self_distillation_loss([_f(), _f()], [o, o]), torch.tensor(2 * expected))


def test_loss_zero_when_maps_equal_with_finite_gradients():
    f = torch.randn(2, 4, 3, 4, 5, requires_grad=True)
    o = (2.5 * f.detach()).requires_grad_()  # same map up to scale
    loss = self_distillation_loss([f, f], [o, f])
    assert loss.abs() < 1e-6
    loss.backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(o.grad).all()


def test_gradients_reach_both_sides():
    f = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    o = torch.randn(2, 5, 4, 4, 4, requires_grad=True)
    self_distillation_loss([f], [o]).backward()
    assert f.grad.abs().sum() > 0 and o.grad.abs().sum() > 0
