"""Trainer variants that set network constructor arguments (SegResMamba, MISSU): the overrides reach
the network, in training and at inference."""

import torch

import nnunet_ext.trainers as trainers
from nnunet_ext.blocks.mamba import MambaLayer
from tests.architectures.test_init_scale import encoder_scale_ratio
from tests.plans import plans_manager
from tests.trainers.conftest import PATCH


def _build(cls, deep_supervision=True):
    pm = plans_manager(PATCH, [[1, 1, 1]] + [[2, 2, 2]] * 3, [1.0, 1.0, 1.0])
    return cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, deep_supervision)


def _mamba_layers(net) -> int:
    return sum(isinstance(m, MambaLayer) for m in net.modules())


def test_ablation_without_tom_is_the_backbone_alone():
    full, ablated = _build(trainers.SegResMambaTrainer), _build(trainers.SegResMambaTrainerNoToM)
    assert _mamba_layers(full) == 2 + 2 + 4  # mixed blocks at the three coarser levels
    assert _mamba_layers(ablated) == 0
    # everything but the ToM layers is the same network: the same conv and norm tensors, in order
    backbone = [tuple(v.shape) for k, v in full.state_dict().items() if ".mamba." not in k]
    assert [tuple(v.shape) for v in ablated.state_dict().values()] == backbone
    out = ablated(torch.randn(1, 1, *PATCH))
    assert [tuple(o.shape) for o in out] == [(1, 3, 16, 32, 32), (1, 3, 8, 16, 16), (1, 3, 4, 8, 8)]


def test_wide_variant_doubles_every_width_and_inference_rebuild_loads_its_checkpoint():
    wide = _build(trainers.SegResMambaTrainerWide)
    assert wide.encoder.widths == (32, 64, 128, 256)
    assert _build(trainers.SegResMambaTrainer).encoder.widths == (16, 32, 64, 128)
    # nnUNetPredictor rebuilds through the trainer class without deep supervision: keys and shapes match
    rebuilt = _build(trainers.SegResMambaTrainerWide, deep_supervision=False)
    rebuilt.load_state_dict(wide.state_dict())
    wide.eval(), rebuilt.eval()
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), wide(x)[0])


def test_he_init_variant_reaches_the_network():
    torch.manual_seed(0)
    default = _build(trainers.SegResMambaTrainer)
    torch.manual_seed(0)
    he = _build(trainers.SegResMambaTrainerHeInit)
    k, k_he = default.encoder.downsamples[0].conv.weight, he.encoder.downsamples[0].conv.weight
    fan_in = k[0].numel()
    assert k.abs().max().item() <= fan_in ** -0.5 < k_he.abs().max().item()  # PyTorch's uniform bound vs He's normal
    assert [tuple(v.shape) for v in he.state_dict().values()] == [tuple(v.shape) for v in default.state_dict().values()]


def test_missu_pytorch_init_variant_reaches_the_network():
    x = torch.randn(2, 1, *PATCH)
    ratios = {}
    for cls in (trainers.MISSUTrainer, trainers.MISSUTrainerPyTorchInit):
        torch.manual_seed(0)
        ratios[cls.__name__] = encoder_scale_ratio(_build(cls).eval(), x)
    # He init (MISSU's default) grows the encoder's un-normalised stream; PyTorch's keeps it at one scale
    assert ratios["MISSUTrainerPyTorchInit"] < 2 < ratios["MISSUTrainer"], ratios
