"""Per-class segmentation metrics of one case: Dice, HD95 and normalised surface distance (NSD).

Dice is nnU-Net's (its own ``compute_tp_fp_fn_tn`` and ``region_or_label_to_mask``); the surface
metrics come from DeepMind's ``surface-distance`` package (Nikolov et al., "Clinically applicable
segmentation of head and neck anatomy for radiotherapy", JMIR 2021), which measures distances
between surface elements ("surfels") on the voxel-corner grid, weighted by their area in mm²,
with the voxel spacing honoured per axis. We never compute distance transforms ourselves.

Conventions for empty masks (``ref``: reference, ``pred``: prediction, per class):

====================  ===================  ===============  =========================
per class             Dice                 HD95 (mm)        NSD
====================  ===================  ===============  =========================
both non-empty        2TP / (2TP+FP+FN)    95th percentile  surface Dice at tolerance
both empty            NaN                  NaN              NaN
exactly one empty     0.0                  +inf             0.0
====================  ===================  ===============  =========================

- Dice: nnU-Net's ``compute_metrics`` (NaN when TP+FP+FN = 0, i.e. both empty).
- HD95: ``max`` of the two directed, area-weighted 95th-percentile distances in mm; with exactly
  one mask empty there is no surface to measure to, so +inf (never a made-up penalty value).
- NSD: the surface Dice at ``tolerance_mm`` (fraction of both surfaces' area within the tolerance
  of the other surface). Both empty is NaN rather than 1, like Dice and HD95: the class is absent,
  there is nothing to score, and means skip it (as nnU-Net's means skip a NaN Dice).

Arrays are indexed (Z, Y, X) (SimpleITK's ``GetArrayFromImage`` order); ``spacing`` is given in
the same order, i.e. ``image.GetSpacing()[::-1]``. 2D arrays with a 2-entry spacing work too.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import (compute_tp_fp_fn_tn, label_or_region_to_key,
                                                      region_or_label_to_mask)
from surface_distance import metrics as _sd

LabelOrRegion = int | tuple[int, ...]

#: percentile of the robust Hausdorff distance
HD_PERCENTILE = 95.0


def dice(mask_ref: np.ndarray, mask_pred: np.ndarray, ignore_mask: np.ndarray | None = None) -> float:
    """nnU-Net's Dice of two boolean masks: ``2TP / (2TP + FP + FN)``, NaN when both are empty.

    Voxels in ``ignore_mask`` (nnU-Net's ignore label in the reference) are left out.
    """
    tp, fp, fn, _ = compute_tp_fp_fn_tn(mask_ref, mask_pred, ignore_mask)
    if tp + fp + fn == 0:
        return math.nan
    return float(2 * tp / (2 * tp + fp + fn))


def surface_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                    tolerance_mm: float = 1.0) -> dict[str, float]:
    """HD95 (mm) and NSD at ``tolerance_mm`` of two boolean masks (see the module's conventions).

    Args:
        mask_ref, mask_pred: boolean arrays of the same shape, (Z, Y, X) or (Y, X).
        spacing: voxel spacing in mm in the arrays' axis order.
        tolerance_mm: NSD tolerance in mm.

    Returns:
        ``{"hd95": float, "nsd": float}``.
    """
    if mask_ref.shape != mask_pred.shape:
        raise ValueError(f"masks differ in shape: reference {mask_ref.shape}, prediction {mask_pred.shape}")
    if len(spacing) != mask_ref.ndim:
        raise ValueError(f"spacing {list(spacing)} has {len(spacing)} entries for {mask_ref.ndim}D masks")
    has_ref, has_pred = bool(mask_ref.any()), bool(mask_pred.any())
    if not has_ref and not has_pred:
        return {"hd95": math.nan, "nsd": math.nan}
    if has_ref != has_pred:
        return {"hd95": math.inf, "nsd": 0.0}
    with warnings.catch_warnings():
        # surface-distance 0.1 reaches scipy.ndimage through its deprecated sub-module names
        warnings.simplefilter("ignore", DeprecationWarning)
        sd = _sd.compute_surface_distances(np.ascontiguousarray(mask_ref, dtype=bool),
                                           np.ascontiguousarray(mask_pred, dtype=bool),
                                           [float(s) for s in spacing])
    return {"hd95": float(_sd.compute_robust_hausdorff(sd, HD_PERCENTILE)),
            "nsd": float(_sd.compute_surface_dice_at_tolerance(sd, float(tolerance_mm)))}


def case_metrics(seg_ref: np.ndarray, seg_pred: np.ndarray, spacing: Sequence[float],
                 labels: Iterable[LabelOrRegion], tolerance_mm: float = 1.0,
                 ignore_label: int | None = None) -> dict[str, dict]:
    """Metrics of every class of one case.

    Args:
        seg_ref, seg_pred: integer label maps of the same shape.
        spacing: voxel spacing in mm, in the arrays' axis order.
        labels: labels (int) or regions (tuple of labels, nnU-Net's region-based training).
        tolerance_mm: NSD tolerance.
        ignore_label: nnU-Net's ignore label: reference voxels with it count for no class; they
            are left out of Dice (as nnU-Net does) and removed from the predicted mask before
            the surface metrics.

    Returns:
        ``{key: {"dice", "hd95", "nsd", "n_ref", "n_pred"}}`` with nnU-Net's keys (``"1"``,
        ``"(1, 2)"``); ``n_ref`` / ``n_pred`` are voxel counts.
    """
    ignore = seg_ref == ignore_label if ignore_label is not None else None
    out = {}
    for lr in labels:
        mask_ref = region_or_label_to_mask(seg_ref, lr)
        mask_pred = region_or_label_to_mask(seg_pred, lr)
        d = dice(mask_ref, mask_pred, ignore)
        if ignore is not None:
            mask_pred = mask_pred & ~ignore
        s = surface_metrics(mask_ref, mask_pred, spacing, tolerance_mm)
        out[label_or_region_to_key(lr)] = {"dice": d, "hd95": s["hd95"], "nsd": s["nsd"],
                                           "n_ref": int(mask_ref.sum()), "n_pred": int(mask_pred.sum())}
    return out


def summarize_class(values: Sequence[dict]) -> dict:
    """Mean over cases of one class's metrics.

    NaN (class absent from both) is skipped. HD95's mean is +inf as soon as one case has a missed
    or hallucinated structure (+inf): dropping those would flatter the model; ``hd95_finite`` is the
    mean over the finite cases only, ``n_one_empty`` says how many were left out.

    Returns:
        ``{"dice", "hd95", "hd95_finite", "nsd", "n_cases", "n_both_empty", "n_one_empty"}``.
    """
    def nanmean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return float(np.mean(xs)) if xs else math.nan

    hd = [v["hd95"] for v in values]
    return {
        "dice": nanmean([v["dice"] for v in values]),
        "hd95": nanmean(hd),
        "hd95_finite": nanmean([h for h in hd if not math.isinf(h)]),
        "nsd": nanmean([v["nsd"] for v in values]),
        "n_cases": len(values),
        "n_both_empty": sum(1 for h in hd if math.isnan(h)),
        "n_one_empty": sum(1 for h in hd if math.isinf(h)),
    }


def summarize_overall(class_means: Sequence[dict]) -> dict:
    """Mean over classes of the per-class means (nnU-Net's ``foreground_mean``), NaN skipped;
    ``hd95`` is +inf if any class's is."""
    out = {}
    for k in ("dice", "hd95", "hd95_finite", "nsd"):
        xs = [m[k] for m in class_means if not math.isnan(m[k])]
        out[k] = float(np.mean(xs)) if xs else math.nan
    return out
