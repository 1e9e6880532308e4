"""Run the stock nnUNetv2_* console scripts in subprocesses, as a user would.

The child environment is the parent's minus every nnU-Net variable (including
``nnUNet_extTrainer``: the installed start-up hook must supply it), plus temp-dir paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.synthetic import build_synthetic_dataset

BIN = Path(sys.executable).parent
DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_Tiny"


def clean_env(root: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), OMP_NUM_THREADS="2", MKL_NUM_THREADS="2",
               nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0", NUMBA_NUM_THREADS="2")
    env.update(extra)
    return env


def run(cmd: list[str], env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` (first word resolved in the venv's bin dir); on failure show its output."""
    exe = BIN / cmd[0]
    p = subprocess.run([str(exe if exe.exists() else cmd[0]), *cmd[1:]], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed with {p.returncode}\n--- stdout\n{p.stdout[-6000:]}"
                             f"\n--- stderr\n{p.stderr[-6000:]}")
    return p


@dataclass
class TinyDataset:
    root: Path

    @property
    def env(self) -> dict:
        return clean_env(self.root)

    @property
    def raw(self) -> Path:
        return self.root / "raw" / DATASET_NAME

    @property
    def plans_file(self) -> Path:
        return self.root / "preprocessed" / DATASET_NAME / "nnUNetPlans.json"

    def plans(self) -> dict:
        return json.loads(self.plans_file.read_text())

    def write_plans(self, identifier: str, plans: dict) -> None:
        plans = dict(plans, plans_name=identifier)
        (self.plans_file.parent / f"{identifier}.json").write_text(json.dumps(plans, indent=2))

    def train(self, trainer: str, fold: int = 0, configuration: str = "3d_fullres", *more: str,
              check: bool = True) -> subprocess.CompletedProcess:
        return run(["nnUNetv2_train", str(DATASET_ID), configuration, str(fold), "-tr", trainer,
                    "-device", "cpu", *more], self.env, check=check)

    def output_folder(self, trainer: str, configuration: str = "3d_fullres", plans: str = "nnUNetPlans") -> Path:
        return self.root / "results" / DATASET_NAME / f"{trainer}__{plans}__{configuration}"

    def predict(self, trainer: str, out: Path, folds: str = "0", *more: str,
                env: dict | None = None) -> subprocess.CompletedProcess:
        """``nnUNetv2_predict`` of ``imagesTs`` (no TTA); ``env`` adds variables to the clean environment."""
        return run(["nnUNetv2_predict", "-i", str(self.raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID),
                    "-c", "3d_fullres", "-f", *folds.split(), "-tr", trainer, "-device", "cpu",
                    "-npp", "1", "-nps", "1", "--disable_tta", *more], {**self.env, **(env or {})})


def make_tiny_dataset(root: Path) -> TinyDataset:
    """Generate the synthetic dataset and run the stock plan+preprocess on it (3d_fullres)."""
    ds = TinyDataset(root)
    build_synthetic_dataset(root / "raw", DATASET_ID, "Tiny")
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1",
         "--verify_dataset_integrity"], clean_env(root, nnUNet_n_proc_DA="1"))
    return ds


def assert_same_geometry(pred_dir: Path, image_dir: Path) -> list[np.ndarray]:
    """Every input image has a prediction with its size, spacing, origin and direction; returns the arrays."""
    import SimpleITK as sitk

    images = sorted(image_dir.glob("*_0000.nii.gz"))
    assert images, f"no images in {image_dir}"
    arrays = []
    for img_path in images:
        case = img_path.name[: -len("_0000.nii.gz")]
        pred_path = pred_dir / f"{case}.nii.gz"
        assert pred_path.is_file(), f"missing prediction {pred_path}"
        img, pred = sitk.ReadImage(str(img_path)), sitk.ReadImage(str(pred_path))
        assert pred.GetSize() == img.GetSize()
        np.testing.assert_allclose(pred.GetSpacing(), img.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(pred.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(pred.GetDirection(), img.GetDirection(), atol=1e-6)
        arrays.append(sitk.GetArrayFromImage(pred))
    return arrays


def copy_as_interrupted(src_fold: Path, dst_fold: Path) -> None:
    """Make ``dst_fold`` look like a training stopped after ``src_fold``'s epochs (checkpoint_latest only)."""
    dst_fold.mkdir(parents=True, exist_ok=True)
    shutil.copy(src_fold / "checkpoint_final.pth", dst_fold / "checkpoint_latest.pth")
