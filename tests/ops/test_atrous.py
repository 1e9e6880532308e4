import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.ops.atrous import AtrousConv3d, atrous_conv3d_space_to_batch


@pytest.mark.parametrize("dilation, size", [
    ((3, 3, 3), (7, 9, 6)),      # sizes not multiples of the rate: padded, then cropped
    ((5, 5, 5), (5, 11, 4)),     # an axis shorter than the rate
    ((1, 3, 5), (6, 8, 10)),     # anisotropic rates
    ((2, 2, 2), (1, 2, 3)),
])
def test_space_to_batch_equals_dilated_conv_values_and_gradients(dilation, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref = F.conv3d(x, w, b, padding=dilation, dilation=dilation)
    ours = atrous_conv3d_space_to_batch(x, w, b, dilation)
    assert ours.shape == ref.shape == (2, 4, *size)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (x, w, b), g)
    grads_ours = torch.autograd.grad(ours, (x, w, b), g)
    for a, r in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, r)


def test_module_is_a_conv3d_with_the_same_state_dict_and_output():
    torch.manual_seed(0)
    ours = AtrousConv3d(2, 3, 3, 1, 3, dilation=3)
    ref = torch.nn.Conv3d(2, 3, 3, 1, 3, dilation=3)
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Conv3d) and set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(1, 2, 8, 7, 9)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    # other settings (stride, rate 1) take the native path
    strided = AtrousConv3d(2, 3, 3, 2, 1)
    assert strided(x).shape == (1, 3, 4, 4, 5)
