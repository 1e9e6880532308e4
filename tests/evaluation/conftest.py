import numpy as np
import pytest

from tests.evaluation.label_maps import reference, write


@pytest.fixture
def folders(tmp_path):
    """``(gt, pred)``: case_a predicted exactly; in case_b label 1 is one slice thicker each side and
    label 2 is missed."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    ref = reference()
    grown = np.zeros_like(ref)
    grown[7:13, 10:30, 10:30] = 1
    write(ref, gt / "case_a.nii.gz")
    write(ref, pred / "case_a.nii.gz")
    write(ref, gt / "case_b.nii.gz")
    write(grown, pred / "case_b.nii.gz")
    return gt, pred
