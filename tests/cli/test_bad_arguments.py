"""Bad arguments to every command stop with one line naming the option and the fix, before anything
is computed or written (in-process through the console entry point, so it is fast)."""

import pytest

from nnunet_ext.cli.main import main

PATCH = ["--patch", "32", "32", "32"]

# (argv, fragment of the one-line message); "argparse:" marks argparse's own `error: ...` line
BAD = [
    # demo
    (["demo", "--epochs", "0"], "--epochs must be >= 1 (epochs per fold), got 0"),
    (["demo", "--iters", "-1"], "--iters must be >= 1"),
    (["demo", "--spacing", "0"], "--spacing must be a number from 1 to 10 mm (default 4), got 0"),
    (["demo", "--spacing", "-4"], "--spacing must be a number from 1 to 10"),
    (["demo", "--spacing", "nan"], "--spacing must be a number from 1 to 10"),
    (["demo", "--spacing", "12"], "--spacing must be a number from 1 to 10"),
    (["demo", "--dataset-id", "0"], "--dataset-id must be from 1 to 999"),
    (["demo", "--dataset-id", "1000"], "--dataset-id must be from 1 to 999"),
    (["demo", "--folds", "0", "5"], "--folds takes distinct folds from 0 1 2 3 4"),
    (["demo", "--folds", "1", "1"], "--folds takes distinct folds"),
    (["demo", "--trainer", "nnUNetTrainer", "nnUNetTrainer"], "--trainer names a trainer twice"),
    (["demo", "--trainer", "UNETRPPTrainer_5epochs"], "give the base trainer name"),
    (["demo", "--trainer", "NoSuchTrainer"], "unknown trainer 'NoSuchTrainer'; ours: MISSUTrainer"),
    (["demo", "--epochs", "two"], "argparse: argument --epochs: invalid int value: 'two'"),
    (["demo", "--device", "tpu"], "argparse: argument --device: invalid choice"),
    # summary
    (["summary", "--arch", "nope", *PATCH], "unknown architecture 'nope'; known: "),
    (["summary", "--arch", "small_unet", "--patch", "33", "32", "32"],
     "--patch 33 32 32 is not divisible by the total stride 8 8 8 nnU-Net's planner gives it (axis Z: 33 % 8 = 1); "
     "nnU-Net would plan --patch 40 32 32"),
    (["summary", "--arch", "small_unet", "--patch", "32", "32"], "argparse: argument --patch: expected 3 arguments"),
    (["summary", "--arch", "small_unet", "--patch", "0", "32", "32"],
     "--patch takes voxel counts >= 1 (z y x), got 0 32 32"),
    (["summary", "--arch", "small_unet", "--patch", "-32", "32", "32"], "--patch takes voxel counts >= 1"),
    (["summary", "--arch", "small_unet", "--patch", "4", "4", "4"], "--patch 4 4 4 is too small for a U-Net"),
    (["summary", "--arch", "small_unet", *PATCH, "--num-classes", "0"], "--num-classes must be >= 1"),
    (["summary", "--arch", "small_unet", *PATCH, "--input-channels", "0"], "--input-channels must be >= 1"),
    (["summary", "--arch", "small_unet", *PATCH, "--spacing", "0", "1", "1"], "--spacing takes voxel sizes in mm > 0"),
    (["summary", "--arch", "small_unet", *PATCH, "--spacing", "-1", "1", "1"], "--spacing takes voxel sizes in mm > 0"),
    # benchmark (checked before any network is measured)
    (["benchmark", "--repeats", "-1"], "--repeats must be >= 1 (timed runs), got -1"),
    (["benchmark", "--warmup", "-1"], "--warmup must be >= 0"),
    (["benchmark", "--batch", "0"], "--batch must be >= 1"),
    (["benchmark", "--num-classes", "1"], "--num-classes must be >= 2"),
    (["benchmark", "--threads", "0"], "--threads must be >= 1"),
    (["benchmark", "--timeout", "0"], "--timeout must be > 0 seconds"),
    (["benchmark", "--patch", "33", "32", "32"], "nnU-Net would plan --patch 40 32 32"),
    (["benchmark", "--patch", "-64", "64", "64"], "--patch takes voxel counts >= 1"),
    (["benchmark", "--patch", "64", "64"], "argparse: argument --patch: expected 3 arguments"),
    (["benchmark", "--spacing", "0", "1", "1"], "--spacing takes voxel sizes in mm > 0"),
    (["benchmark", "--archs", "no_such_net"], "unknown architecture(s) no_such_net"),
    # benchmark-scan
    (["benchmark-scan", "--repeats", "-1"], "--repeats must be >= 1, got -1"),
    (["benchmark-scan", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["benchmark-scan", "--lengths", "512", "0"], "--lengths must be >= 1, got 0"),
    (["benchmark-scan", "--batch", "0"], "--batch must be >= 1"),
    (["benchmark-scan", "--threads", "0"], "--threads must be >= 1"),
    (["benchmark-scan", "--reference-max-length", "0"], "--reference-max-length must be >= 1"),
    (["benchmark-scan", "--backends", "torch@0"], "unknown --backends torch@0"),
    (["benchmark-scan", "--backends", "nope"],
     "unknown --backends nope; choose from torch fused cuda reference mambapy"),
    (["benchmark-scan", "--backends", "torch", "torch"], "--backends names a method twice"),
]


@pytest.fixture
def bare_dir(tmp_path, monkeypatch):
    """An empty working directory and no nnU-Net paths: the demo would write into ./nnunet_ext_demo."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_argument_is_one_line_naming_it(bare_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    if message.startswith("argparse: "):
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"nnunet-ext {argv[0]}: error: {message[len('argparse: '):]}" in err.splitlines()[-1]
    else:
        text = str(e.value.code)
        assert text.startswith(f"nnunet-ext {argv[0]}: ") and "\n" not in text, text
        assert message in text, text
    assert list(bare_dir.iterdir()) == []         # nothing written


@pytest.mark.parametrize("var", ["nnUNet_raw", "nnUNet_results"])
def test_demo_nnunet_path_that_is_no_folder(bare_dir, monkeypatch, var):
    (bare_dir / "afile").write_text("")
    for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(v, str(bare_dir / v))
    monkeypatch.setenv(var, str(bare_dir / "afile" / "sub"))
    with pytest.raises(SystemExit) as e:
        main(["demo", "--trainer", "nnUNetTrainer"])
    assert str(e.value.code) == (f"nnunet-ext demo: {var} '{bare_dir / 'afile' / 'sub'}' is not a folder "
                                 f"('{bare_dir / 'afile'}' is a file); set {var} to a writable folder")
    assert sorted(p.name for p in bare_dir.iterdir()) == ["afile"]   # none of the three folders created


def test_demo_read_only_folder(bare_dir, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(bare_dir) else real(path, mode))
    with pytest.raises(SystemExit, match=r"nnunet-ext demo: nnUNet_raw '.*nnunet_ext_demo/raw' is not writable "
                                         r"\('.*' is read-only for this user\); run the demo in a writable folder "
                                         r"or set nnUNet_raw"):
        main(["demo", "--trainer", "nnUNetTrainer"])
    assert list(bare_dir.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["summary", "--arch", "small_unet", "--patch", "32", "32", "32"],
    ["benchmark", "--archs", "small_unet", "--patch", "32", "32", "32", "--repeats", "1"],
    ["demo", "--epochs", "1", "--iters", "1", "--device", "cpu"],
])
def test_a_bad_scan_backend_is_one_line_before_anything_runs(argv, monkeypatch, tmp_path):
    """$NNUNET_EXT_SCAN_BACKEND is checked at start-up: one line naming the choices, nothing written."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNUNET_EXT_SCAN_BACKEND", "bogus")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert str(e.value) == (f"nnunet-ext {argv[0]}: $NNUNET_EXT_SCAN_BACKEND='bogus' is not a scan back-end; "
                            f"choose one of auto, cuda, triton, fused, torch")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("NNUNET_EXT_SCAN_BACKEND", "cuda")          # a back-end that cannot run on the CPU
    if argv[0] != "summary":                                       # summary runs on the meta device
        with pytest.raises(SystemExit, match=rf"^nnunet-ext {argv[0]}: scan back-end 'cuda' needs CUDA tensors"):
            main(argv)
        assert list(tmp_path.iterdir()) == []
