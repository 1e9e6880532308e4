"""Parameter and MAC counts: exact on a known layer, training-only modules, meta equals real."""

from torch import nn

from nnunet_ext.architectures import PlanSpec, available_architectures, build_network
from nnunet_ext.bench.counts import count_macs, count_parameters, summarize


class _WithAux(nn.Module):
    training_only_modules = ("aux",)

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(3, 4)     # 12 + 4
        self.aux = nn.Linear(4, 2)      # 8 + 2

    def forward(self, x):
        return self.main(x)


def test_count_parameters_inference_and_trainable():
    net = _WithAux()
    net.main.bias.requires_grad_(False)
    assert count_parameters(net) == 26
    assert count_parameters(net, inference=True) == 16
    assert count_parameters(net, trainable_only=True) == 22
    assert count_parameters(net, inference=True, trainable_only=True) == 12


def test_count_macs_of_a_convolution_and_the_mode_is_restored():
    conv = nn.Conv3d(2, 4, 3, padding=1)
    conv.train()
    # every output voxel (8^3) of every output channel (4): input_channels (2) x kernel (27) MACs; bias not counted
    assert count_macs(conv, (1, 2, 8, 8, 8)) == 8 ** 3 * 4 * 2 * 27
    assert conv.training
    assert count_macs(conv, (3, 2, 8, 8, 8)) == 3 * count_macs(conv, (1, 2, 8, 8, 8))


def test_summarize_on_meta_equals_counting_the_real_network():
    s = summarize("small_unet", (32, 32, 48), 2, 3)
    spec = PlanSpec.from_patch((32, 32, 48))
    real = build_network("small_unet", spec, 2, 3, False)
    assert s["arch"] == "small_unet" and s["patch_size"] == [32, 32, 48]
    assert s["strides"] == [list(st) for st in spec.strides]
    assert s["params"] == s["params_trainable"] == count_parameters(real)
    assert s["macs"] == count_macs(real, (1, 2, 32, 32, 48)) > 0


def test_macs_scale_with_volume_at_fixed_strides():
    spec = PlanSpec.from_patch((32, 32, 32))
    net = build_network("small_unet", spec, 1, 3, False)
    net2 = build_network("small_unet", PlanSpec((64, 32, 32), spec.strides), 1, 3, False)
    assert count_parameters(net2) == count_parameters(net)
    assert count_macs(net2, (1, 1, 64, 32, 32)) == 2 * count_macs(net, (1, 1, 32, 32, 32))


def test_every_registered_network_counts_on_meta():
    for arch in available_architectures():
        s = summarize(arch, (32, 64, 64), 1, 3)
        assert s["params"] >= s["params_inference"] > 0 and s["macs"] > 0, arch
