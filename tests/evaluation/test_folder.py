"""Scoring a folder: spacing from the images, classes from the references or dataset.json, the
label checks of every case, means (the worker pool runs in tests/cli/test_evaluate_cli.py)."""

import json
import math

import numpy as np
import pytest

from nnunet_ext.evaluation.cases import EvaluationError
from nnunet_ext.evaluation.folder import SCHEMA, evaluate_folders
from tests.evaluation.label_maps import reference, write


def test_spacing_from_images_in_array_order(folders):
    gt, pred = folders
    r = evaluate_folders(gt, pred, tolerance_mm=1.0, num_processes=1, progress=False)
    assert r["labels"] == {"1": "1", "2": "2"}    # union of the references' non-zero labels
    a, b = r["cases"]
    assert (a["case"], b["case"]) == ("case_a", "case_b")
    assert b["spacing"] == [3.0, 1.0, 1.0]
    assert a["metrics"]["1"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "n_ref": 1600, "n_pred": 1600}
    # one slice of growth along z is 3 mm (SimpleITK's z spacing), not 1 mm
    assert b["metrics"]["1"]["hd95"] == pytest.approx(3.0)
    assert b["metrics"]["1"]["dice"] == pytest.approx(0.8)
    assert b["metrics"]["2"] == {"dice": 0.0, "hd95": math.inf, "nsd": 0.0, "n_ref": 48, "n_pred": 0}
    assert r["mean"]["1"]["hd95"] == pytest.approx(1.5)
    assert r["mean"]["2"]["hd95"] == math.inf and r["mean"]["2"]["hd95_finite"] == 0.0
    assert r["mean"]["2"]["n_one_empty"] == 1
    assert r["overall"]["dice"] == pytest.approx((0.9 + 0.5) / 2)
    at3 = evaluate_folders(gt, pred, labels=[1], tolerance_mm=3.0, num_processes=1, progress=False)
    assert at3["cases"][1]["metrics"]["1"]["nsd"] == pytest.approx(1.0)
    assert list(at3["labels"]) == ["1"]


def test_dataset_json_labels_names_and_regions(folders, tmp_path):
    gt, pred = folders
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "slab": 1, "cube": 2, "both": [1, 2]},
                              "file_ending": ".nii.gz"}))
    r = evaluate_folders(gt, pred, dataset_json=ds, num_processes=1, progress=False)
    assert r["labels"] == {"1": "slab", "2": "cube", "(1, 2)": "both"}
    assert r["cases"][0]["metrics"]["(1, 2)"]["dice"] == 1.0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(EvaluationError, match="--labels"):
        evaluate_folders(gt, pred, dataset_json=bad, num_processes=1, progress=False)


def test_predictions_without_reference_are_listed_not_scored(folders):
    gt, pred = folders
    write(reference(), pred / "extra.nii.gz")
    r = evaluate_folders(gt, pred, num_processes=1, progress=False)
    assert r["schema"] == SCHEMA
    assert [c["case"] for c in r["cases"]] == ["case_a", "case_b"]
    assert r["ignored_predictions"] == ["extra.nii.gz"]


def test_grids_are_checked_before_scoring(folders):
    gt, pred = folders
    write(reference(), pred / "case_b.nii.gz", spacing=(1.0, 1.0, 2.5))
    with pytest.raises(EvaluationError, match=r"case 'case_b': prediction spacing"):
        evaluate_folders(gt, pred, num_processes=1, progress=False)


def test_bad_labels_and_folders(folders, tmp_path):
    gt, pred = folders
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_folders(gt, tmp_path / "nope", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="no '\\*.nii.gz' files"):
        evaluate_folders(empty, pred, progress=False)
    with pytest.raises(EvaluationError, match="repeat"):
        evaluate_folders(gt, pred, labels=[1, 1], progress=False)
    with pytest.raises(EvaluationError, match="tolerance"):
        evaluate_folders(gt, pred, tolerance_mm=-1, progress=False)


@pytest.mark.parametrize("where", ["pred", "gt"])
def test_fractional_label_map_is_refused_naming_the_file(folders, where):
    gt, pred = folders
    soft = reference().astype(np.float32)
    soft[soft == 2] = 1.6                          # e.g. a linearly interpolated mask
    folder = pred if where == "pred" else gt
    write(soft, folder / "case_b.nii.gz", dtype=np.float32)
    what = "prediction" if where == "pred" else "reference"
    for kwargs in ({}, {"labels": [1, 2]}):        # labels from the references, or given
        with pytest.raises(EvaluationError, match=rf"case 'case_b': {what} '.*case_b\.nii\.gz' holds "
                                                  rf"non-integer values \(e\.g\. 1\.6\)"):
            evaluate_folders(gt, pred, num_processes=1, progress=False, **kwargs)


def test_float_label_map_with_integer_values_is_scored(folders):
    gt, pred = folders
    write(reference(), pred / "case_b.nii.gz", dtype=np.float32)
    r = evaluate_folders(gt, pred, num_processes=1, progress=False)
    assert r["cases"][1]["metrics"]["2"]["dice"] == 1.0


def test_prediction_label_outside_dataset_json_is_an_error(folders, tmp_path):
    gt, pred = folders
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "slab": 1, "cube": 2}}))
    extra = reference()
    extra[15:18, 30:35, 30:35] = 3
    write(extra, pred / "case_b.nii.gz")
    with pytest.raises(EvaluationError, match=r"case 'case_b': prediction '.*case_b\.nii\.gz' holds label\(s\) 3 "
                                              r"that dataset.json '.*' does not declare \(declared: 0 1 2\)"):
        evaluate_folders(gt, pred, dataset_json=ds, num_processes=1, progress=False)
    # the same for a reference
    write(extra, gt / "case_a.nii.gz")
    write(extra, pred / "case_a.nii.gz")
    with pytest.raises(EvaluationError, match=r"case 'case_a': reference .* holds label\(s\) 3"):
        evaluate_folders(gt, pred, dataset_json=ds, num_processes=1, progress=False)
    # declared (here as a region member), it is scored
    ds.write_text(json.dumps({"labels": {"background": 0, "slab": 1, "cube": 2, "both": [2, 3]}}))
    r = evaluate_folders(gt, pred, dataset_json=ds, num_processes=1, progress=False)
    assert r["cases"][1]["metrics"]["(2, 3)"]["n_pred"] == 48 + 75


def test_prediction_label_in_no_reference_is_an_error_when_classes_are_inferred(folders):
    gt, pred = folders
    extra = reference()
    extra[15:18, 30:35, 30:35] = 3
    write(extra, pred / "case_b.nii.gz")
    with pytest.raises(EvaluationError, match=r"case 'case_b': prediction .* holds label\(s\) 3 that no reference "
                                              r"has \(the references hold 0 1 2\).*--labels 1 2 3"):
        evaluate_folders(gt, pred, num_processes=1, progress=False)
    # explicit classes: scored as asked, the other label reported per case
    r = evaluate_folders(gt, pred, labels=[1], num_processes=1, progress=False)
    assert list(r["labels"]) == ["1"] and r["unscored_prediction_labels"] == {"case_b": [3]}
    r = evaluate_folders(gt, pred, labels=[1, 3], num_processes=1, progress=False)
    assert r["unscored_prediction_labels"] == {} and r["cases"][1]["metrics"]["3"]["n_pred"] == 75
    # labels the references have but the caller left out (1, 2 here) are the caller's choice, not reported
    r = evaluate_folders(gt, pred, labels=[3], num_processes=1, progress=False)
    assert list(r["labels"]) == ["3"] and r["unscored_prediction_labels"] == {}
