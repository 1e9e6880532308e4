"""Pairing references with predictions by name, and the grid check of each pair."""

import numpy as np
import pytest

from nnunet_ext.evaluation.cases import EvaluationError, check_geometry, pair_cases
from tests.evaluation.label_maps import reference, write


def test_pairs_by_name_and_lists_predictions_without_reference(folders):
    gt, pred = folders
    write(reference(), pred / "extra.nii.gz")
    (pred / "notes.txt").write_text("")
    pairs, ignored = pair_cases(gt, pred)
    assert [(c, r.name, p.name) for c, r, p in pairs] == [("case_a", "case_a.nii.gz", "case_a.nii.gz"),
                                                          ("case_b", "case_b.nii.gz", "case_b.nii.gz")]
    assert all(r.parent == gt.resolve() and p.parent == pred.resolve() for _, r, p in pairs)
    assert ignored == ["extra.nii.gz"]


def test_missing_case_names_it(folders):
    gt, pred = folders
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"lacks 1 of 2 cases: 'case_b'.*case_b\.nii\.gz"):
        pair_cases(gt, pred)


def test_bad_folders(folders, tmp_path):
    gt, pred = folders
    with pytest.raises(EvaluationError, match="prediction folder '.*nope' does not exist"):
        pair_cases(gt, tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="no '\\*.nii.gz' files"):
        pair_cases(empty, pred)


@pytest.mark.parametrize("what, kwargs, match", [
    ("shape", {"arr": np.zeros((20, 40, 39))}, r"case 'case_b': prediction shape \[39, 40, 20\]"),
    ("spacing", {"spacing": (1.0, 1.0, 2.5)}, r"case 'case_b': prediction spacing \[1.0, 1.0, 2.5\]"),
    ("origin", {"origin": (0.0, 0.0, 5.0)}, r"case 'case_b': prediction origin"),
])
def test_mismatched_geometry_names_the_case(folders, what, kwargs, match):
    gt, pred = folders
    write(kwargs.pop("arr", reference()), pred / "case_b.nii.gz", **kwargs)
    check_geometry("case_a", gt / "case_a.nii.gz", pred / "case_a.nii.gz")
    with pytest.raises(EvaluationError, match=match):
        check_geometry("case_b", gt / "case_b.nii.gz", pred / "case_b.nii.gz")


def test_unreadable_file_names_it(folders):
    gt, pred = folders
    (pred / "case_b.nii.gz").write_bytes(b"not an image")
    with pytest.raises(EvaluationError, match=r"cannot read '.*case_b\.nii\.gz'"):
        check_geometry("case_b", gt / "case_b.nii.gz", pred / "case_b.nii.gz")
