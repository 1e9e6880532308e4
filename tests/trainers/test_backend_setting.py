"""$NNUNET_EXT_SCAN_BACKEND is checked when a trainer is created, before nnU-Net's ``__init__`` makes
the fold folder: a bad value is one line (SystemExit), not a failure inside the first training step."""

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.ops.backends import ENV_VAR
from nnunet_ext.trainers import SegMambaTrainer
from tests.plans import make_plans

DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
                "file_ending": ".nii.gz"}


@pytest.mark.parametrize("value, words", [
    ("bogus", f"SegMambaTrainer: ${ENV_VAR}='bogus' is not a scan back-end; choose one of auto, cuda"),
    ("cuda", "SegMambaTrainer: scan back-end 'cuda' needs CUDA tensors, got cpu tensors; unset"),
])
def test_a_bad_scan_backend_stops_the_trainer_before_nnunet_starts(monkeypatch, value, words):
    monkeypatch.setattr(nnUNetTrainer, "__init__", lambda *a, **k: pytest.fail("nnU-Net's __init__ ran"))
    monkeypatch.setenv(ENV_VAR, value)
    plans = make_plans((16, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(SystemExit) as e:
        SegMambaTrainer(plans, "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    assert str(e.value).startswith(words) and "\n" not in str(e.value)


def test_a_usable_scan_backend_goes_on_to_nnunet(monkeypatch):
    started = []
    monkeypatch.setattr(nnUNetTrainer, "__init__", lambda *a, **k: started.append(True))
    monkeypatch.setenv(ENV_VAR, "torch")
    SegMambaTrainer(make_plans((16, 32, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2))), "3d_fullres", 0, DATASET_JSON,
                    torch.device("cpu"))
    assert started == [True]
