"""Which labels are scored, and which a label map may hold.

Label maps must hold integer labels: a file with fractional (or NaN) values, e.g. probabilities or
a linearly resampled mask, is refused, never rounded. Every label in a prediction must be one the
evaluation knows, as nnU-Net's ``verify_dataset_integrity`` refuses undeclared labels:

- with a ``dataset.json``: the labels it declares (background, classes, region members, ignore);
  an undeclared label in a prediction or reference is an error;
- without one and without explicit classes: background and the labels found in the references
  (the classes scored); a label only predictions hold is an error, since it would go unscored
  (nnU-Net's own evaluation never guesses the classes: it takes them from dataset.json or ``-l``);
- with explicit classes (no dataset.json): the caller chose them, so other prediction labels that
  no reference holds are not an error; the caller reports them (:func:`unscored`).

A class is a label (int) or a region (tuple of labels, nnU-Net's region-based training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nnunet_ext.evaluation.cases import EvaluationError
from nnunet_ext.evaluation.metrics import LabelOrRegion


def members(classes: Iterable[LabelOrRegion]) -> set[int]:
    """The labels the classes are made of (a region's members, a label itself)."""
    return {v for lr in classes for v in (lr if isinstance(lr, tuple) else (lr,))}


def labels_from_dataset_json(path: str | os.PathLike
                             ) -> tuple[list[LabelOrRegion], dict[LabelOrRegion, str], int | None]:
    """Classes of an nnU-Net ``dataset.json``: ``(labels_or_regions, names, ignore_label)``.

    Background (0) and ``ignore`` are not classes; a list value is a region (region-based training).
    """
    try:
        labels = json.loads(Path(path).read_text())["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise EvaluationError(f"cannot read the 'labels' of dataset.json '{path}' ({e}); pass the "
                              f"dataset's dataset.json or give the classes with --labels") from None
    out, names, ignore = [], {}, None
    for name, value in labels.items():
        try:
            lr = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)
        except (TypeError, ValueError):
            raise EvaluationError(f"dataset.json '{path}': label '{name}' has value {value!r}; expected an integer "
                                  f"or a list of integers (a region)") from None
        if name == "ignore":
            ignore = lr
            continue
        if lr == 0 or lr == (0,):
            continue
        lr = lr[0] if isinstance(lr, tuple) and len(lr) == 1 else lr
        out.append(lr)
        names[lr] = name
    return out, names, ignore


def check_classes(labels: Sequence[LabelOrRegion], ignore_label: int | None) -> list[LabelOrRegion]:
    """The classes to score as ints / tuples of ints: at least one, each once, not the ignore label."""
    labels = [tuple(int(v) for v in lr) if isinstance(lr, (tuple, list)) else int(lr) for lr in labels]
    if not labels:
        raise EvaluationError("no classes to evaluate; give at least one with --labels")
    if ignore_label is not None and ignore_label in labels:
        raise EvaluationError(f"label {ignore_label} is the dataset's ignore label; leave it out of --labels")
    if len(set(labels)) != len(labels):
        raise EvaluationError(f"labels {labels} repeat a class; give each once")
    return labels


def label_values(case: str, what: str, path: Path, seg: np.ndarray) -> set[int]:
    """The labels in ``seg``; :class:`EvaluationError` if it holds anything but integers."""
    values = np.unique(seg)
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            raise EvaluationError(
                f"case '{case}': {what} '{path}' holds non-integer values (e.g. {float(bad[0]):g}); a segmentation "
                f"must hold integer labels — export label maps (as nnUNetv2_predict does), not probabilities "
                f"or a linearly interpolated mask (resample label maps with nearest neighbour)")
    return {int(v) for v in values}


def check_known(case: str, what: str, path: Path, values: set[int], known: frozenset[int] | None,
                dataset_json: str | None) -> None:
    """:class:`EvaluationError` naming the case and labels if ``values`` holds labels outside ``known``
    (the labels ``dataset_json`` declares, else background and the references' labels)."""
    unknown = sorted(values - known) if known is not None else []
    if not unknown:
        return
    shown, listed = " ".join(map(str, unknown)), " ".join(map(str, sorted(known)))
    if dataset_json is not None:
        raise EvaluationError(f"case '{case}': {what} '{path}' holds label(s) {shown} that dataset.json "
                              f"'{dataset_json}' does not declare (declared: {listed}); check that the "
                              f"{what}s belong to this dataset and use its label numbering")
    classes = " ".join(map(str, sorted((known | set(unknown)) - {0})))
    raise EvaluationError(f"case '{case}': {what} '{path}' holds label(s) {shown} that no reference has (the "
                          f"references hold {listed}), so they would go unscored; give the classes with "
                          f"--labels (e.g. --labels {classes}) or --dataset-json")


def unscored(classes: Sequence[LabelOrRegion], ref_values: set[int],
             pred_values: dict[str, set[int]]) -> dict[str, list[int]]:
    """Per case, the prediction labels that are neither background, nor in a class, nor in any
    reference (only asked where the caller gave the classes without a dataset.json)."""
    covered = {0} | ref_values | members(classes)
    return {case: sorted(vs - covered) for case, vs in pred_values.items() if vs - covered}
