"""The classes scored and the labels a label map may hold."""

import json
from pathlib import Path

import numpy as np
import pytest

from nnunet_ext.evaluation.cases import EvaluationError
from nnunet_ext.evaluation.labels import (check_classes, check_known, label_values, labels_from_dataset_json,
                                          members, unscored)


def test_dataset_json_labels_names_regions_and_ignore(tmp_path):
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "slab": 1, "cube": 2, "both": [1, 2], "ignore": 3}}))
    assert labels_from_dataset_json(ds) == ([1, 2, (1, 2)], {1: "slab", 2: "cube", (1, 2): "both"}, 3)
    assert members([1, (2, 4)]) == {1, 2, 4}
    ds.write_text(json.dumps({"labels": {"background": 0, "slab": "one"}}))
    with pytest.raises(EvaluationError, match="label 'slab' has value 'one'"):
        labels_from_dataset_json(ds)
    ds.write_text("{}")
    with pytest.raises(EvaluationError, match="--labels"):
        labels_from_dataset_json(ds)


@pytest.mark.parametrize("labels, ignore, match", [
    ([], None, "no classes to evaluate"),
    ([1, 1], None, "repeat a class"),
    ([1, 3], 3, "label 3 is the dataset's ignore label"),
])
def test_bad_classes(labels, ignore, match):
    with pytest.raises(EvaluationError, match=match):
        check_classes(labels, ignore)


def test_classes_as_ints_and_tuples():
    assert check_classes([np.int64(1), [1, 2]], None) == [1, (1, 2)]


def test_label_values_of_integer_maps_only():
    path = Path("x.nii.gz")
    assert label_values("c", "prediction", path, np.array([[0, 2], [2, 1]], np.uint8)) == {0, 1, 2}
    assert label_values("c", "prediction", path, np.array([0.0, 2.0], np.float32)) == {0, 2}
    for bad in (0.5, np.nan):
        with pytest.raises(EvaluationError, match=r"case 'c': prediction 'x\.nii\.gz' holds non-integer values"):
            label_values("c", "prediction", path, np.array([0.0, bad], np.float32))


def test_unknown_labels():
    path = Path("x.nii.gz")
    check_known("c", "prediction", path, {0, 1}, frozenset({0, 1, 2}), None)
    check_known("c", "prediction", path, {0, 9}, None, None)                 # None: any label
    with pytest.raises(EvaluationError, match=r"holds label\(s\) 9 that no reference has .*--labels 1 9"):
        check_known("c", "prediction", path, {0, 9}, frozenset({0, 1}), None)
    with pytest.raises(EvaluationError, match=r"holds label\(s\) 9 that dataset.json 'ds.json' does not declare"):
        check_known("c", "prediction", path, {0, 9}, frozenset({0, 1}), "ds.json")


def test_unscored_prediction_labels():
    assert unscored([1, (2, 3)], {0, 1, 4}, {"a": {0, 1, 3, 4}, "b": {0, 5, 6}}) == {"b": [5, 6]}
