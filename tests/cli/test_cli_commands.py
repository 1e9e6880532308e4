import json

import pytest

from nnunet_ext.architectures import available_architectures, get_architecture
from nnunet_ext.cli.main import main


def test_trainers_lists_every_registered_trainer(capsys):
    assert main(["trainers"]) == 0
    out = capsys.readouterr().out
    for arch in available_architectures():
        e = get_architecture(arch)
        assert any(line.startswith(e.trainer) and e.title in line for line in out.splitlines())
    # the variants, each with the first line of its docstring
    variants = out.split("Variants")[1].splitlines()
    for name in ("MISSUTrainerNoDistillation", "SegResMambaTrainerNoToM", "SegResMambaTrainerWide",
                 "SegResMambaTrainerHeInit", "MISSUTrainerPyTorchInit"):
        assert any(line.startswith(name + " ") and len(line.split()) > 3 for line in variants), name
    assert not any(line.startswith(("AbstractExtTrainer", "SegMambaTrainer ")) for line in variants)


def test_summary_json(capsys):
    assert main(["summary", "--arch", "small_unet", "--patch", "32", "32", "32", "--num-classes", "3", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {"arch", "params", "params_inference", "macs"} <= set(s) and s["arch"] == "small_unet"
    assert s["params"] > 0 and s["macs"] > 0


def test_summary_unknown_arch_names_the_known(capsys):
    with pytest.raises(SystemExit, match="unknown architecture 'foo'; known: .*small_unet"):
        main(["summary", "--arch", "foo", "--patch", "32", "32", "32"])


def test_summary_bad_patch_is_one_clear_message():
    with pytest.raises(SystemExit, match="not divisible"):
        main(["summary", "--arch", "small_unet", "--patch", "33", "32", "32"])


def test_version_names_nnunet_ext_nnunet_and_torch(capsys):
    from importlib.metadata import version

    import nnunet_ext

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == (f"nnunet-ext {nnunet_ext.__version__} (nnunetv2 {version('nnunetv2')}, "
                                               f"torch {version('torch')})")
    assert nnunet_ext.__version__ == version("nnunet-ext")     # the package and its metadata agree
