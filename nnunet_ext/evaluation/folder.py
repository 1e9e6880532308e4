"""Score a folder of predictions against a folder of references (``nnunet-ext evaluate``).

:func:`evaluate_folders` pairs the cases and checks their grids (:mod:`.cases`), settles the
classes (:mod:`.labels`), then scores every case (:mod:`.metrics`) in this process or in one pool
of spawned workers, and averages per class and over classes. Voxel spacing comes from the images
(SimpleITK's (x, y, z) order, reversed to the arrays' (z, y, x)). Writing the result and its
markdown summary is :mod:`.report`'s job.

Result (``evaluate_folders``' return value, written as JSON by :func:`.report.write_outputs`;
NaN and +inf become JSON's ``NaN`` / ``Infinity`` tokens)::

    {
      "schema": "nnunet-ext/evaluate/1",
      "reference_folder": str, "prediction_folder": str, "file_ending": ".nii.gz",
      "tolerance_mm": float,             # NSD tolerance
      "hd_percentile": 95.0,
      "labels": {key: name},             # evaluated classes; key "1" or "(1, 2)" (a region)
      "ignore_label": int | null,
      "ignored_predictions": [str],      # prediction files with no reference
      "unscored_prediction_labels": {case: [int]},   # prediction labels outside the classes and
                                                     # every reference (only with explicit labels)
      "cases": [{"case": str, "reference_file": str, "prediction_file": str,
                 "spacing": [z, y, x],   # mm
                 "metrics": {key: {"dice": float, "hd95": float, "nsd": float,
                                   "n_ref": int, "n_pred": int}}}],   # voxel counts
      "mean": {key: {"dice", "hd95", "hd95_finite", "nsd",          # over cases, NaN skipped
                     "n_cases", "n_both_empty", "n_one_empty"}},
      "overall": {"dice", "hd95", "hd95_finite", "nsd"}             # mean of the class means
    }
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Sequence

from nnunet_ext.evaluation import labels as _labels
from nnunet_ext.evaluation.cases import EvaluationError, check_geometry, pair_cases
from nnunet_ext.evaluation.metrics import (HD_PERCENTILE, LabelOrRegion, case_metrics, summarize_class,
                                           summarize_overall)

SCHEMA = "nnunet-ext/evaluate/1"


# ---------------------------------------------------------------------------------- per case (worker)
def _reference_labels(job: tuple[str, str]) -> list[int]:
    import SimpleITK as sitk
    case, path = job
    return sorted(_labels.label_values(case, "reference", Path(path), sitk.GetArrayFromImage(sitk.ReadImage(path))))


def evaluate_case(job: tuple) -> dict:
    """One worker job ``(case, reference, prediction, classes, tolerance_mm, ignore_label, known labels,
    dataset.json or None)``: the case's metrics per class, its labels checked (also for
    :mod:`.crossval`)."""
    import SimpleITK as sitk
    case, ref, pred, labels, tolerance_mm, ignore_label, known, dataset_json = job
    img_ref, img_pred = sitk.ReadImage(str(ref)), sitk.ReadImage(str(pred))
    spacing = tuple(float(s) for s in img_ref.GetSpacing()[::-1])  # SimpleITK (x,y,z) -> array (z,y,x)
    seg_ref, seg_pred = sitk.GetArrayViewFromImage(img_ref), sitk.GetArrayViewFromImage(img_pred)
    ref_values = _labels.label_values(case, "reference", ref, seg_ref)
    pred_values = _labels.label_values(case, "prediction", pred, seg_pred)
    if dataset_json is not None:
        _labels.check_known(case, "reference", ref, ref_values, known, dataset_json)
    _labels.check_known(case, "prediction", pred, pred_values, known, dataset_json)
    return {"case": case, "reference_file": str(ref), "prediction_file": str(pred), "spacing": list(spacing),
            "metrics": case_metrics(seg_ref, seg_pred, spacing, labels, tolerance_mm, ignore_label),
            "_ref_values": sorted(ref_values), "_pred_values": sorted(pred_values)}


# ---------------------------------------------------------------------------------- the pool
class Runner:
    """Maps a function over jobs with a tqdm bar, in this process (one worker) or in one pool of
    spawned workers that lives as long as the ``with`` block (both passes share it)."""

    def __init__(self, num_processes: int, progress: bool):
        self.num_processes, self.progress, self.pool = num_processes, progress, None

    def __enter__(self):
        if self.num_processes > 1:
            import multiprocessing
            self.pool = multiprocessing.get_context("spawn").Pool(self.num_processes)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()

    def map(self, fn, jobs: list, desc: str) -> list:
        from tqdm import tqdm
        results = map(fn, jobs) if self.pool is None else self.pool.imap(fn, jobs)
        out = []
        with tqdm(total=len(jobs), desc=desc, unit="case", disable=not self.progress, file=sys.stderr) as bar:
            for r in results:
                out.append(r)
                bar.update()
        return out


def default_num_processes() -> int:
    """nnU-Net's default worker count (``nnUNet_def_n_proc``, else 8), capped at the CPU count."""
    from nnunetv2.configuration import default_num_processes as nnunet_default
    return max(1, min(int(nnunet_default), os.cpu_count() or 1))


def _check_classes_occur(classes: Sequence[LabelOrRegion], found: set[int], gt_dir, pred_dir) -> None:
    """Classes the caller named of which no reference and no prediction holds a voxel would score
    NaN everywhere: one error naming them and the labels that do occur."""
    absent = [lr for lr in classes if not _labels.members([lr]) & found]
    if absent:
        shown = " ".join(str(lr).replace(" ", "") for lr in absent)
        there = " ".join(map(str, sorted(found - {0}))) or "none"
        raise EvaluationError(f"label(s) {shown} occur in no reference in '{gt_dir}' and no prediction in "
                              f"'{pred_dir}', so every score would be NaN; the labels there: {there}")


# ---------------------------------------------------------------------------------- the folder
def evaluate_folders(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike,
                     labels: Sequence[LabelOrRegion] | None = None, tolerance_mm: float = 1.0,
                     dataset_json: str | os.PathLike | None = None, num_processes: int | None = None,
                     file_ending: str = ".nii.gz", progress: bool = True) -> dict:
    """Evaluate every reference in ``gt_dir`` against the same-named file in ``pred_dir``.

    Args:
        labels: classes to evaluate; default: those of ``dataset_json`` if given, else the union
            of the non-zero labels in the references.
        tolerance_mm: NSD tolerance in mm.
        dataset_json: nnU-Net ``dataset.json`` (class names, ignore label, default classes).
        num_processes: worker processes; default :func:`default_num_processes`.
        progress: show a tqdm bar on stderr.

    Returns:
        The result dict described in the module docstring.

    Raises:
        EvaluationError: missing cases, mismatched geometry, bad labels (nothing is computed then);
            a label map with non-integer values or with labels outside the known ones (see
            :mod:`.labels`), naming the case and file.
    """
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise EvaluationError(f"tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    pairs, ignored = pair_cases(gt_dir, pred_dir, file_ending)
    for case, ref, pred in pairs:
        check_geometry(case, ref, pred)
    nproc = default_num_processes() if num_processes is None else max(1, int(num_processes))

    names, ignore_label = {}, None
    known = None                      # the labels a prediction may hold (None: any)
    if dataset_json is not None:
        ds_labels, names, ignore_label = _labels.labels_from_dataset_json(dataset_json)
        known = frozenset({0} | _labels.members(ds_labels) | ({ignore_label} if ignore_label is not None else set()))
        if labels is None:
            labels = ds_labels
    given = labels is not None
    explicit = given and dataset_json is None
    if labels is not None:
        labels = _labels.check_classes(labels, ignore_label)
    with Runner(min(nproc, len(pairs)), progress) as runner:
        if labels is None:
            found = runner.map(_reference_labels, [(c, str(r)) for c, r, _ in pairs], "labels")
            labels = sorted({v for vs in found for v in vs} - {0})
            if not labels:
                raise EvaluationError(f"no classes to evaluate: the references in '{gt_dir}' contain only "
                                      f"background; give the classes with --labels or --dataset-json")
            known = frozenset({0, *labels})
        ds = None if dataset_json is None else str(dataset_json)
        jobs = [(case, ref, pred, labels, float(tolerance_mm), ignore_label, known, ds)
                for case, ref, pred in pairs]
        cases = runner.map(evaluate_case, jobs, "evaluate")

    # explicit classes without a dataset.json: labels no reference has and no class covers are reported
    ref_values = {v for c in cases for v in c.pop("_ref_values")}
    pred_values = {c["case"]: set(c.pop("_pred_values")) for c in cases}
    unscored = _labels.unscored(labels, ref_values, pred_values) if explicit else {}
    if given:
        _check_classes_occur(labels, ref_values | {v for vs in pred_values.values() for v in vs}, gt_dir, pred_dir)

    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    keys = [label_or_region_to_key(lr) for lr in labels]
    mean = {k: summarize_class([c["metrics"][k] for c in cases]) for k in keys}
    return {
        "schema": SCHEMA,
        "reference_folder": str(Path(gt_dir).resolve()),
        "prediction_folder": str(Path(pred_dir).resolve()),
        "file_ending": file_ending,
        "tolerance_mm": float(tolerance_mm),
        "hd_percentile": HD_PERCENTILE,
        "labels": {k: names.get(lr, k) for k, lr in zip(keys, labels)},
        "ignore_label": ignore_label,
        "ignored_predictions": ignored,
        "unscored_prediction_labels": unscored,
        "cases": cases,
        "mean": mean,
        "overall": summarize_overall(list(mean.values())),
    }
