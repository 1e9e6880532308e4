"""A tiny synthetic dataset (ellipsoids in noise) for fast tests, written in nnU-Net raw format.

No external data: every case is generated from a seed in milliseconds. Labels: 0 background,
1 "outer" (an ellipsoid shell), 2 "inner" (its core) and, with ``extra_class``, 3 "spot" (a small
ball beside the core); image intensity = class mean + noise, so the task is learnable in a handful
of iterations.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np


def make_case(shape: Sequence[int], rng: np.random.Generator,
              extra_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One case: image float32 (Z, Y, X) and label uint8 (Z, Y, X) with values {0, 1, 2} ({0..3}
    with ``extra_class``)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    center = np.asarray(shape, dtype=np.float32) * rng.uniform(0.4, 0.6, 3)
    radii = np.asarray(shape, dtype=np.float32) * rng.uniform(0.22, 0.32, 3)
    r = np.sqrt((((grid - center) / radii) ** 2).sum(-1))
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = 1
    label[r < 0.55] = 2
    if extra_class:
        spot = center + radii * np.asarray([0.0, 0.75, 0.0], dtype=np.float32)
        label[np.sqrt((((grid - spot) / (radii * 0.3)) ** 2).sum(-1)) < 1.0] = 3
    image = np.choose(label, [0.0, 1.0, 2.0, 3.0]).astype(np.float32) + rng.normal(0, 0.35, shape).astype(np.float32)
    return image * 100.0 + 50.0, label


def write_nifti(array: np.ndarray, path: Path, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)):
    """Write a (Z, Y, X) array with (z, y, x) spacing; SimpleITK stores it as (x, y, z)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in origin[::-1]))
    sitk.WriteImage(img, str(path), useCompression=True)


def build_synthetic_dataset(raw_root: str | os.PathLike, dataset_id: int = 901, name: str = "Tiny",
                            num_train: int = 6, num_test: int = 2, shape: Sequence[int] = (32, 40, 32),
                            spacing: Sequence[float] = (1.5, 1.0, 1.0), seed: int = 0,
                            extra_class: bool = False) -> Path:
    """Write ``Dataset{id:03d}_{name}`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json).

    Test cases get a non-zero origin so that tests can check the predictions keep the geometry.
    Written into a temporary folder and renamed, so a failure never leaves a half dataset.
    Returns the dataset folder.
    """
    target = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it or choose another dataset_id")
    target.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for i in range(num_train + num_test):
            image, label = make_case(shape, rng, extra_class)
            split = "Tr" if i < num_train else "Ts"
            origin = (0.0, 0.0, 0.0) if split == "Tr" else (-12.5, 7.0, 3.25)
            write_nifti(image, tmp / f"images{split}" / f"case_{i:03d}_0000.nii.gz", spacing, origin)
            write_nifti(label, tmp / f"labels{split}" / f"case_{i:03d}.nii.gz", spacing, origin)
        labels = {"background": 0, "outer": 1, "inner": 2, **({"spot": 3} if extra_class else {})}
        dataset = {"channel_names": {"0": "MRI"}, "labels": labels,
                   "numTraining": num_train, "file_ending": ".nii.gz",
                   "description": "nnunet-ext synthetic ellipsoids (tests)"}
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
