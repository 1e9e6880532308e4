"""`nnunet-ext demo` end to end, at a tiny budget: the README's first command must keep working."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nnunet_cli import BIN, clean_env

pytestmark = pytest.mark.e2e


def _user_env(tmp_path: Path) -> dict:
    """A user's shell: no nnU-Net variables (the demo then works in ./nnunet_ext_demo)."""
    env = clean_env(tmp_path)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_def_n_proc"):
        env.pop(var)
    return env


def _demo(tmp_path: Path, *args: str) -> str:
    env = _user_env(tmp_path)
    p = subprocess.run([str(BIN / "nnunet-ext"), "demo", "--trainer", "SmallUNetTrainer", "--epochs", "1",
                        "--iters", "2", "--spacing", "6", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    return p.stdout


def test_demo_runs_the_workflow_and_reuses_it(tmp_path):
    out = _demo(tmp_path)
    root = tmp_path / "nnunet_ext_demo"
    for step in ("plan and preprocess", "training fold 0", "predicting the held-out test cases"):
        assert f"==> {step}" in out
    assert "grey_matter" in out and "white_matter" in out and "mean" in out
    results = next((root / "results").glob("Dataset987_*"))
    metrics = json.loads((results / "nnunet_ext_demo" / "SmallUNetTrainer_1epoch_2iters" / "test_metrics.json")
                         .read_text())
    assert len(metrics["cases"]) == 2 and set(metrics["mean"]) == {"1", "2"}
    assert 0.0 <= metrics["overall"]["dice"] <= 1.0
    assert len(list((results / "nnunet_ext_demo" / "SmallUNetTrainer_1epoch_2iters" / "overlays").glob("*.png"))) == 2

    again = _demo(tmp_path)
    assert "==> plan and preprocess" not in again and "reusing the demo dataset" in again
    assert "fold 0: reusing the trained model" in again


def test_demo_rejects_bad_arguments(tmp_path):
    for args, msg in ((["--trainer", "NoSuchTrainer"], "unknown trainer 'NoSuchTrainer'"),
                      (["--trainer", "UNETRPPTrainer_5epochs"], "give the base trainer name"),
                      (["--folds", "0", "7"], "--folds takes distinct folds")):
        p = subprocess.run([sys.executable, "-m", "nnunet_ext.cli.main", "demo", *args], cwd=tmp_path,
                           env=_user_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert p.returncode != 0 and msg in p.stderr, p.stderr[-2000:]
        assert not (tmp_path / "nnunet_ext_demo").exists()
