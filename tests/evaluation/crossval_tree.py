"""A tiny nnU-Net results tree, written directly (no training): what ``nnunet-ext compare`` reads.

``<root>/preprocessed/Dataset901_Tiny/{dataset.json, splits_final.json, gt_segmentations/}`` and
``<root>/results/Dataset901_Tiny/<Trainer>__nnUNetPlans__3d_fullres/fold_<f>/validation/`` with
one prediction per held-out case. Predictions are made from the reference by a named recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.synthetic import make_case, write_nifti

DATASET = "Dataset901_Tiny"
SHAPE = (12, 16, 12)
SPACING = (2.0, 1.0, 1.0)                     # (z, y, x) mm


def _exact(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ref.copy()


def _noise(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 3, ref.shape).astype(np.uint8)


def _eroded(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Label 1 loses a random share of its boundary: slightly worse than exact, never equal."""
    from scipy import ndimage

    out = ref.copy()
    inner = ndimage.binary_erosion(ref > 0)
    rim = (ref == 1) & ~inner
    drop = rim & (rng.random(ref.shape) < rng.uniform(0.2, 0.6))
    out[drop] = 0
    return out


def _missed_inner(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Label 2 is missed entirely (predicted as 1): its Dice 0, HD95 +inf."""
    out = ref.copy()
    out[out == 2] = 1
    return out


RECIPES = {"exact": _exact, "noise": _noise, "eroded": _eroded, "missed_inner": _missed_inner}


class Tree:
    def __init__(self, root: Path, num_cases: int = 10, num_folds: int = 5, seed: int = 0):
        self.root = Path(root)
        self.results = self.root / "results"
        self.preprocessed = self.root / "preprocessed"
        self.cases = [f"case_{i:03d}" for i in range(num_cases)]
        self.splits = [{"train": [c for j, c in enumerate(self.cases) if j % num_folds != f],
                        "val": [c for j, c in enumerate(self.cases) if j % num_folds == f]} for f in range(num_folds)]
        self.refs = {}
        pre = self.preprocessed / DATASET
        (pre / "gt_segmentations").mkdir(parents=True)
        self.results.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for c in self.cases:
            _, label = make_case(SHAPE, rng)
            self.refs[c] = label
            write_nifti(label, self.gt(c), SPACING)
        (pre / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz",
                                                      "labels": {"background": 0, "outer": 1, "inner": 2},
                                                      "numTraining": num_cases}))
        (pre / "splits_final.json").write_text(json.dumps(self.splits))

    def gt(self, case: str) -> Path:
        return self.preprocessed / DATASET / "gt_segmentations" / f"{case}.nii.gz"

    def fold_dir(self, trainer: str, fold: int) -> Path:
        return self.results / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"

    def prediction(self, trainer: str, case: str) -> Path:
        fold = next(f for f, s in enumerate(self.splits) if case in s["val"])
        return self.fold_dir(trainer, fold) / "validation" / f"{case}.nii.gz"

    def add_trainer(self, trainer: str, recipe: str, folds=None, seed: int = 1) -> None:
        """Write the trainer's validation predictions of ``folds`` (default all) with ``recipe``."""
        rng = np.random.default_rng(seed)
        for f, split in enumerate(self.splits):
            if folds is not None and f not in folds:
                continue
            (self.fold_dir(trainer, f) / "validation").mkdir(parents=True)
            (self.fold_dir(trainer, f) / "checkpoint_final.pth").write_bytes(b"")
            for c in split["val"]:
                write_nifti(RECIPES[recipe](self.refs[c], rng), self.prediction(trainer, c), SPACING)

    def env(self) -> dict:
        return {"nnUNet_results": str(self.results), "nnUNet_preprocessed": str(self.preprocessed)}

    def snapshot(self) -> list:
        """Every path and its modification time (to show that nothing was written)."""
        return sorted((str(p.relative_to(self.root)), p.stat().st_mtime_ns) for p in self.root.rglob("*"))
