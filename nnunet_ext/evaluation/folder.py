"""Evaluate a folder of predictions against a folder of references (``nnunet-ext evaluate``).

Files are matched by name (nnU-Net writes predictions under the reference's file name, e.g.
``case_000.nii.gz``). Every reference must have a prediction; predictions without a reference are
ignored (listed in the result). Before any metric is computed, each pair's header is checked:
same size, spacing, origin and direction, else one :class:`EvaluationError` names the case.
Voxel spacing comes from the images (SimpleITK's (x, y, z) order, reversed to the arrays'
(z, y, x)); metrics are those of :mod:`nnunet_ext.evaluation.metrics`.

Label maps must hold integer labels: a file with fractional (or NaN) values, e.g. probabilities or
a linearly resampled mask, is refused, never rounded. Every label in a prediction must be one the
evaluation knows, as nnU-Net's ``verify_dataset_integrity`` refuses undeclared labels:

- with a ``dataset.json``: the labels it declares (background, classes, region members, ignore);
  an undeclared label in a prediction or reference is an error;
- without one and without ``labels``: background and the labels found in the references (the
  classes scored); a label only predictions hold is an error, since it would go unscored (nnU-Net's
  own evaluation never guesses the classes: it takes them from dataset.json or ``-l``);
- with ``labels`` (no dataset.json): the caller chose the classes, so other prediction labels that
  no reference holds are not an error; they are listed in ``unscored_prediction_labels``.

JSON schema (``write_json``; NaN and +inf are written as JSON's ``NaN`` / ``Infinity`` tokens,
as nnU-Net's ``summary.json`` does; Python's ``json`` and pandas read them)::

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

CSV (``write_csv``): one row per case and class with columns :data:`CSV_COLUMNS`, then one
``case = "mean"`` row per class and a ``case = "mean", label = "all"`` row (the overall means);
NaN / inf are written ``nan`` / ``inf``.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nnunet_ext.evaluation.metrics import (HD_PERCENTILE, LabelOrRegion, case_metrics, summarize_class,
                                           summarize_overall)

SCHEMA = "nnunet-ext/evaluate/1"
CSV_COLUMNS = ("case", "label", "name", "dice", "hd95", "nsd", "n_ref", "n_pred")


class EvaluationError(ValueError):
    """Bad evaluation input (missing cases, mismatched geometry, bad labels); the message names
    the case and what to fix."""


# ---------------------------------------------------------------------------------- labels
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


def _unique_labels(job: tuple[str, str]) -> list[int]:
    import SimpleITK as sitk
    case, path = job
    return sorted(_label_values(case, "reference", Path(path), sitk.GetArrayFromImage(sitk.ReadImage(path))))


# ---------------------------------------------------------------------------------- pairing + checks
def _case_files(folder: Path, file_ending: str) -> dict[str, Path]:
    return {p.name[:-len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending)}


def _header(path: Path) -> dict:
    import SimpleITK as sitk
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise EvaluationError(f"cannot read '{path}': {str(e).strip().splitlines()[-1]}") from None
    return {"size": tuple(r.GetSize()), "spacing": tuple(r.GetSpacing()), "origin": tuple(r.GetOrigin()),
            "direction": tuple(r.GetDirection()), "components": r.GetNumberOfComponents()}


def check_geometry(case: str, ref: Path, pred: Path) -> None:
    """Raise :class:`EvaluationError` naming ``case`` unless both images share size, spacing,
    origin and direction (as nnU-Net's exported predictions do)."""
    a, b = _header(ref), _header(pred)
    fix = ("; predictions must be on the reference's grid (nnU-Net's exported predictions are) — "
           "resample the prediction onto the reference image or compare against the matching references")
    if len(a["size"]) not in (2, 3) or a["components"] != 1:
        raise EvaluationError(f"case '{case}': reference '{ref}' is not a 2D/3D label map "
                              f"(size {list(a['size'])}, {a['components']} components per voxel)")
    if a["size"] != b["size"]:
        raise EvaluationError(f"case '{case}': prediction shape {list(b['size'])} (x, y, z) differs from the "
                              f"reference's {list(a['size'])}{fix}")
    checks = (("spacing", 1e-5, 1e-5), ("origin", 0.0, 1e-3), ("direction", 0.0, 1e-4))
    for key, rtol, atol in checks:
        if not np.allclose(a[key], b[key], rtol=rtol, atol=atol):
            raise EvaluationError(f"case '{case}': prediction {key} {[round(float(v), 6) for v in b[key]]} "
                                  f"(x, y, z) differs from the reference's {[round(float(v), 6) for v in a[key]]}{fix}")
    if b["components"] != 1:
        raise EvaluationError(f"case '{case}': prediction '{pred}' has {b['components']} components per voxel; "
                              f"expected a label map")


def pair_cases(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike,
               file_ending: str = ".nii.gz") -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``([(case, reference, prediction)], ignored_prediction_names)``; every reference must have a
    prediction of the same file name."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for what, d in (("reference", gt_dir), ("prediction", pred_dir)):
        if not d.is_dir():
            raise EvaluationError(f"{what} folder '{d}' does not exist")
    refs, preds = _case_files(gt_dir, file_ending), _case_files(pred_dir, file_ending)
    if not refs:
        raise EvaluationError(f"no '*{file_ending}' files in the reference folder '{gt_dir}'; "
                              f"point --gt at the labels (e.g. labelsTs) or set --file-ending")
    missing = [c for c in refs if c not in preds]
    if missing:
        shown = ", ".join(f"'{c}'" for c in missing[:10])
        shown += f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise EvaluationError(f"prediction folder '{pred_dir}' lacks {len(missing)} of {len(refs)} cases: {shown} "
                              f"(expected '{missing[0]}{file_ending}'); predict them (nnUNetv2_predict) or "
                              f"evaluate against a reference folder with only the predicted cases")
    ignored = [preds[c].name for c in preds if c not in refs]
    return [(c, refs[c].resolve(), preds[c].resolve()) for c in refs], ignored


# ---------------------------------------------------------------------------------- per case (worker)
def _label_values(case: str, what: str, path: Path, seg: np.ndarray) -> set[int]:
    """The labels in ``seg``; :class:`EvaluationError` if it holds anything but integers."""
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        values = np.unique(seg)
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            raise EvaluationError(
                f"case '{case}': {what} '{path}' holds non-integer values (e.g. {float(bad[0]):g}); a segmentation "
                f"must hold integer labels — export label maps (as nnUNetv2_predict does), not probabilities "
                f"or a linearly interpolated mask (resample label maps with nearest neighbour)")
        return {int(v) for v in values}
    return {int(v) for v in np.unique(seg)}


def _check_known(case: str, what: str, path: Path, values: set[int], known: frozenset[int] | None,
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


def _evaluate_case(job: tuple) -> dict:
    import SimpleITK as sitk
    case, ref, pred, labels, tolerance_mm, ignore_label, known, dataset_json = job
    img_ref, img_pred = sitk.ReadImage(str(ref)), sitk.ReadImage(str(pred))
    spacing = tuple(float(s) for s in img_ref.GetSpacing()[::-1])  # SimpleITK (x,y,z) -> array (z,y,x)
    seg_ref, seg_pred = sitk.GetArrayViewFromImage(img_ref), sitk.GetArrayViewFromImage(img_pred)
    ref_values = _label_values(case, "reference", ref, seg_ref)
    pred_values = _label_values(case, "prediction", pred, seg_pred)
    if dataset_json is not None:
        _check_known(case, "reference", ref, ref_values, known, dataset_json)
    _check_known(case, "prediction", pred, pred_values, known, dataset_json)
    return {"case": case, "reference_file": str(ref), "prediction_file": str(pred), "spacing": list(spacing),
            "metrics": case_metrics(seg_ref, seg_pred, spacing, labels, tolerance_mm, ignore_label),
            "_ref_values": sorted(ref_values), "_pred_values": sorted(pred_values)}


class _Runner:
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


# ---------------------------------------------------------------------------------- the folder
def _check_labels(labels: Sequence[LabelOrRegion], ignore_label: int | None) -> list[LabelOrRegion]:
    labels = [tuple(int(v) for v in lr) if isinstance(lr, (tuple, list)) else int(lr) for lr in labels]
    if not labels:
        raise EvaluationError("no classes to evaluate; give at least one with --labels")
    if ignore_label is not None and ignore_label in labels:
        raise EvaluationError(f"label {ignore_label} is the dataset's ignore label; leave it out of --labels")
    if len(set(labels)) != len(labels):
        raise EvaluationError(f"labels {labels} repeat a class; give each once")
    return labels


def default_num_processes() -> int:
    """nnU-Net's default worker count (``nnUNet_def_n_proc``, else 8), capped at the CPU count."""
    from nnunetv2.configuration import default_num_processes as nnunet_default
    return max(1, min(int(nnunet_default), os.cpu_count() or 1))


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
            a label map with non-integer values or with labels outside the known ones (see the
            module docstring), naming the case and file.
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
        ds_labels, names, ignore_label = labels_from_dataset_json(dataset_json)
        known = frozenset({0} | {v for lr in ds_labels for v in (lr if isinstance(lr, tuple) else (lr,))}
                          | ({ignore_label} if ignore_label is not None else set()))
        if labels is None:
            labels = ds_labels
    explicit = labels is not None and dataset_json is None
    if labels is not None:
        labels = _check_labels(labels, ignore_label)
    with _Runner(min(nproc, len(pairs)), progress) as runner:
        if labels is None:
            found = runner.map(_unique_labels, [(c, str(r)) for c, r, _ in pairs], "labels")
            labels = sorted({v for vs in found for v in vs} - {0})
            if not labels:
                raise EvaluationError(f"no classes to evaluate: the references in '{gt_dir}' contain only "
                                      f"background; give the classes with --labels or --dataset-json")
            known = frozenset({0, *labels})
        ds = None if dataset_json is None else str(dataset_json)
        jobs = [(case, ref, pred, labels, float(tolerance_mm), ignore_label, known, ds)
                for case, ref, pred in pairs]
        cases = runner.map(_evaluate_case, jobs, "evaluate")

    # explicit classes without a dataset.json: labels no reference has and no class covers are reported
    ref_values = {v for c in cases for v in c.pop("_ref_values")}
    pred_values = {c["case"]: set(c.pop("_pred_values")) for c in cases}
    unscored = {}
    if explicit:
        covered = {0} | ref_values | {v for lr in labels for v in (lr if isinstance(lr, tuple) else (lr,))}
        unscored = {case: sorted(vs - covered) for case, vs in pred_values.items() if vs - covered}

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


# ---------------------------------------------------------------------------------- output
def _atomic_write_all(items: Sequence[tuple[str | os.PathLike, object]]) -> None:
    """Write each ``(path, write)`` via ``write(file)`` to a temp file beside ``path``; only when all
    are written are they renamed into place, so a failure while writing changes none of them."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in items:
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "w", newline="") as f:
                write(f)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write(path: str | os.PathLike, write) -> None:
    """Write via ``write(file)`` to a temp file beside ``path``, then rename it onto ``path``."""
    _atomic_write_all([(path, write)])


def _write_json_to(result: dict):
    return lambda f: (json.dump(result, f, indent=2), f.write("\n"))


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Write ``result`` as JSON (atomically; NaN/+inf as ``NaN``/``Infinity``)."""
    _atomic_write(path, _write_json_to(result))


def write_outputs(result: dict, json_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """Write the JSON and the CSV of ``result``: both, or (on an error) neither."""
    _atomic_write_all([(json_path, _write_json_to(result)), (csv_path, _write_csv_to(result))])


def csv_rows(result: dict) -> list[dict]:
    """Rows of :data:`CSV_COLUMNS`: per case and class, then the class means, then overall."""
    names = result["labels"]
    rows = [{"case": c["case"], "label": k, "name": names[k], **{m: v[m] for m in CSV_COLUMNS[3:]}}
            for c in result["cases"] for k, v in c["metrics"].items()]
    rows += [{"case": "mean", "label": k, "name": names[k], "dice": v["dice"], "hd95": v["hd95"],
              "nsd": v["nsd"], "n_ref": "", "n_pred": ""} for k, v in result["mean"].items()]
    o = result["overall"]
    rows.append({"case": "mean", "label": "all", "name": "all", "dice": o["dice"], "hd95": o["hd95"],
                 "nsd": o["nsd"], "n_ref": "", "n_pred": ""})
    return rows


def _write_csv_to(result: dict):
    def write(f):
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(csv_rows(result))
    return write


def write_csv(result: dict, path: str | os.PathLike) -> None:
    """Write :func:`csv_rows` as CSV (atomically)."""
    _atomic_write(path, _write_csv_to(result))


def format_number(x: float | None, nd: int = 4) -> str:
    """``x`` with ``nd`` decimals for the tables; ``nan``, ``inf`` as such and None as ``-``."""
    if x is None:
        return "-"
    return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{nd}f}")


def format_summary(result: dict) -> str:
    """A short markdown table of the class means and the overall mean."""
    f = format_number

    tol = result["tolerance_mm"]
    lines = [f"| class | Dice | HD95 (mm) | HD95 finite (mm) | NSD@{tol:g}mm | cases (both empty / one empty) |",
             "|---|---|---|---|---|---|"]
    for k, m in result["mean"].items():
        name = result["labels"][k]
        label = k if name == k else f"{k} {name}"
        lines.append(f"| {label} | {f(m['dice'])} | {f(m['hd95'], 2)} | {f(m['hd95_finite'], 2)} | {f(m['nsd'])} | "
                     f"{m['n_cases']} ({m['n_both_empty']} / {m['n_one_empty']}) |")
    o = result["overall"]
    lines.append(f"| **mean** | {f(o['dice'])} | {f(o['hd95'], 2)} | {f(o['hd95_finite'], 2)} | {f(o['nsd'])} | "
                 f"{len(result['cases'])} |")
    return "\n".join(lines)


def parse_labels(values: Iterable[str]) -> list[int]:
    """``--labels`` values as positive ints (clear error otherwise)."""
    out = []
    for v in values:
        try:
            i = int(v)
        except ValueError:
            raise EvaluationError(f"--labels takes integer label values (e.g. --labels 1 2), got '{v}'") from None
        if i <= 0:
            raise EvaluationError(f"--labels takes foreground labels (> 0), got {i}; background is not scored")
        out.append(i)
    return out
