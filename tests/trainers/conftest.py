"""Shared fixtures of the trainer tests."""

import pytest
import torch

from tests.plans import make_plans

#: the patch of :func:`make_trainer`'s plan: total stride 8 (three poolings by 2 after a full-resolution stage)
PATCH = [16, 32, 32]


@pytest.fixture
def make_trainer(tmp_path, monkeypatch):
    """A real trainer from a minimal plan (no dataset: train_step is fed a synthetic batch)."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    data = tmp_path / "pre" / "Dataset998_Probe" / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # lets nnU-Net infer its dataset class
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "numTraining": 2, "file_ending": ".nii.gz"}

    def make(cls):
        t = cls(make_plans(PATCH, [[1, 1, 1]] + [[2, 2, 2]] * 3), "3d_fullres", 0, dataset_json, torch.device("cpu"))
        t.initialize()
        return t

    return make
